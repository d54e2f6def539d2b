"""Acquisition: poll the inverter, batch 7 samples, compress, queue (firmware-protocol.md §1.5, §2.2, §2.3, §3).

Each poll reads the selected registers as one contiguous block (lowest to highest address) and picks
them out in the selection's order. Seven samples make a batch, linearised sample-major and compressed
by the firmware's smart selection with the adaptive state (`protocol.compression`), which lives in RAM
and restarts at every boot. The packet is described as the upload document needs it and queued.

Quirks honoured here: `single_register_failure_marker`, `lossy_packets_chosen`,
`method_label_from_first_byte`, `base64_unpadded`, `original_size_2n`, `lossless_always_true`.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable

from device_emulator.context import FirmwareContext
from device_emulator.event_log import POLLS_OK, EventKind
from device_emulator.inverter_link import InverterLink
from device_emulator.packet_queue import PacketQueue
from protocol import modbus
from protocol.compression.batch import BATCH_SAMPLES, Batch
from protocol.compression.decoded import DecodeStatus, Encoded, PacketFormat
from protocol.compression.firmware_base64 import encode_compressed_binary
from protocol.compression.packet import DEFAULT_LABEL, LABELS, MARKERS, decode_packet, method_label
from protocol.compression.selection import compress_batch
from protocol.compression.state import CodecState
from protocol.errors import CodecError
from protocol.upload_document import CompressedPacket, firmware_packet

FAILURE_MARKER = 0xFFFF  # what the firmware's read returns on failure (§1.6)
# What the ESP32 spends compressing one value (all four encoders run); a model, not a measurement,
# so runs are reproducible: 42 values take ~3.4 ms as in the reference capture.
COMPRESSION_US_PER_VALUE = 81

CompressionTimer = Callable[[Batch], int]


def modelled_compression_time(batch: Batch) -> int:
    return COMPRESSION_US_PER_VALUE * batch.count


def format_label(fmt: PacketFormat) -> str:
    """The method label of a packet's true format (the fix of `method_label_from_first_byte`)."""
    marker = next((m for m, f in MARKERS.items() if f is fmt), None)
    return LABELS.get(marker, DEFAULT_LABEL) if marker is not None else DEFAULT_LABEL


class Acquisition:
    def __init__(
        self,
        ctx: FirmwareContext,
        link: InverterLink,
        queue: PacketQueue,
        selection: list[int],
        *,
        compression_time: CompressionTimer = modelled_compression_time,
    ) -> None:
        self.ctx = ctx
        self.link = link
        self.queue = queue
        self.quirks = ctx.profile.quirks
        self.compression_time = compression_time
        self.codec = CodecState()
        self.samples: list[list[int]] = []  # the batch being filled
        self.selection = list(selection)

    def set_selection(self, selection: list[int]) -> None:
        """Poll other registers from now on; a partial batch of the old selection is discarded (§2.3)."""
        if list(selection) != self.selection:
            self.selection = list(selection)
            self.samples.clear()

    async def poll(self) -> list[int] | None:
        """One poll: the sample added to the batch, or None when it was dropped."""
        sample = await self._read_sample()
        if sample is None:
            return None
        self.samples.append(sample)
        if len(self.samples) == BATCH_SAMPLES:
            samples, self.samples = self.samples, []
            self._compress(samples)
        return sample

    async def _read_sample(self) -> list[int] | None:
        # Ids the firmware pads an inconsistent selection with (-1) are skipped and read as 0 (§2.2).
        valid = [a for a in self.selection if a >= 0]
        if not valid:
            self.ctx.console.log("acquisition", "no valid register selected", "E")
            return None
        start, count = modbus.read_block(valid)
        result = await self.link.read_registers(start, count)
        if result.values is not None:
            self.ctx.events.count(POLLS_OK)
            return [result.values[a - start] if a >= 0 else 0 for a in self.selection]
        self.ctx.events.record(EventKind.POLL_FAILED, "inverter read failed", classification=result.failure)
        self.ctx.console.log("acquisition", f"read failed: {result.failure}", "W")
        if self.quirks.single_register_failure_marker and len(self.selection) == 1:
            return [FAILURE_MARKER]  # indistinguishable from a reading: stored as a sample (§11.2.10)
        return None

    def _compress(self, samples: list[list[int]]) -> None:
        try:
            batch = Batch.from_samples(samples, self.selection)
            packet = self._describe(batch)
        except CodecError as error:
            self.ctx.events.record(EventKind.COMPRESSION_FAILED, str(error), layout=self.selection)
            self.ctx.console.log("compression", f"batch dropped: {error}", "E")
            return
        if self.queue.put(packet):
            self.ctx.console.log(
                "compression",
                f"{packet.metadata.method} {packet.metadata.compressed_size_bytes} bytes queued "
                f"({len(self.queue)}/{self.queue.capacity})",
            )
        else:
            self.ctx.events.record(EventKind.QUEUE_OVERFLOW, "queue full: packet dropped")
            self.ctx.console.log("uploader", "queue full, packet dropped", "W")

    def _describe(self, batch: Batch) -> CompressedPacket:
        """Compress `batch` (advancing the codec state) and fill in the packet's metadata."""
        before = self.codec.copy()  # what a receiver mirroring the device knows before this batch
        selection = compress_batch(batch, self.codec)
        chosen = selection.encoded
        if not self.quirks.lossy_packets_chosen:
            chosen = self._exact_choice(batch, list(selection.candidates.values()), before)
        data = chosen.packet
        label = (
            method_label(data) if self.quirks.method_label_from_first_byte else format_label(chosen.format)
        )
        text = (
            encode_compressed_binary(data)
            if self.quirks.base64_unpadded
            else base64.b64encode(data).decode("ascii")
        )
        n = len(batch.layout)
        packet = firmware_packet(
            text,
            method=label,
            register_layout=batch.layout,
            compressed_size=len(data),
            timestamp=self.ctx.millis(),
            compression_time_us=self.compression_time(batch),
            original_size_bytes=None if self.quirks.original_size_2n else 2 * n * batch.samples,
        )
        if not self.quirks.lossless_always_true and packet.metrics is not None:
            exact = _decodes_exactly(chosen, batch, before)
            packet = dataclasses.replace(
                packet, metrics=dataclasses.replace(packet.metrics, lossless_verified=exact)
            )
        return packet

    @staticmethod
    def _exact_choice(batch: Batch, candidates: list[Encoded], before: CodecState) -> Encoded:
        """The shortest candidate (earliest on ties) that a receiver mirroring the state decodes to
        exactly the batch; the firmware's winner when none does."""
        by_size = sorted(candidates, key=lambda c: len(c.packet))
        return next((c for c in by_size if _decodes_exactly(c, batch, before)), by_size[0])


def _decodes_exactly(candidate: Encoded, batch: Batch, before: CodecState) -> bool:
    """Whether a receiver whose mirror is `before` gets exactly the batch back from this packet."""
    try:
        decoded = decode_packet(candidate.packet, batch.layout, before)
    except CodecError:
        return False
    return decoded.status is DecodeStatus.EXACT and decoded.values == batch.values
