"""The upload queue (`DataUploader`'s ring buffer, firmware-protocol.md §2.3, §2.4).

Twenty compressed packets at most. A packet arriving at a full queue is dropped (no overwrite).
An upload drains packets from the front; when the upload fails they are put back at the front in their
original order, ahead of packets queued meanwhile, so the next attempt resends them first.
The queue is RAM: a power cut empties it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from protocol.upload_document import CompressedPacket

CAPACITY = 20


class PacketQueue:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._packets: deque[CompressedPacket] = deque()
        self.dropped = 0  # packets refused because the queue was full

    def __len__(self) -> int:
        return len(self._packets)

    @property
    def full(self) -> bool:
        return len(self._packets) >= self.capacity

    def put(self, packet: CompressedPacket) -> bool:
        """Queue a new packet; False (and the packet is dropped) when the queue is full."""
        if self.full:
            self.dropped += 1
            return False
        self._packets.append(packet)
        return True

    def drain(self, limit: int | None = None) -> list[CompressedPacket]:
        """Take up to `limit` packets (all when None) from the front, oldest first."""
        count = len(self._packets) if limit is None else min(limit, len(self._packets))
        return [self._packets.popleft() for _ in range(count)]

    def put_back(self, packets: Iterable[CompressedPacket]) -> None:
        """Return drained packets to the front in their original order (an upload failed).

        They were in the queue before anything queued since, so they always fit back: packets queued
        meanwhile that no longer fit are the ones dropped, newest first, as the firmware's ring would
        have refused them.
        """
        restored = list(packets)
        self._packets.extendleft(reversed(restored))
        while len(self._packets) > self.capacity:
            self._packets.pop()
            self.dropped += 1

    def snapshot(self) -> list[CompressedPacket]:
        return list(self._packets)
