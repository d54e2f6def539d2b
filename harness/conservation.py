"""Conservation of samples: every sample the simulator served and the device accepted reaches the cloud
exactly once, or is accounted for with a reason. `reconcile()` does the bookkeeping for one device.

The inputs, each from a different side:

* the simulator's ledger: every read it served, with the values and how it ended;
* what the device accepted: its samples in order, from the DUT's probe on the inverter link when the
  emulator runs in this process; otherwise inferred from the ledger (every read delivered intact,
  except those answered late or hit by a fault on the inverter link);
* the device's event stream: boots, full-queue drops, compression failures, uploads and their nonces;
* the cloud: its decoded samples (one row per register), its packets (with decode status) and uploads.

The firmware compresses every 7 accepted samples of one register selection into a packet, so the
accepted samples are cut into batches (a boot or a selection change abandons a batch being filled), and
each batch has exactly one fate: in the cloud (a stored packet with the same values, in order), dropped
by the device with an event (full queue, compression failed), in a packet the cloud stored but could not
decode exactly, in an upload the cloud could not parse, lost with the RAM at a reboot or power cut, or
still on the device. A batch with none of these is missing, and every one of its samples is named. A
stored sample that matches no batch was altered or invented; one stored twice is a duplicate.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.registers import REGISTERS

BATCH = 7  # samples per compressed packet (protocol.compression.batch.BATCH_SAMPLES)
TIME_SLACK = 1e-3  # device seconds: a read and what it caused may differ by rounding
# Events on the inverter link that may cost the device a reading the simulator served.
LINK_FAULT_ACTIONS = frozenset({"drop", "close", "reset", "stall", "corrupt", "ack_loss", "refuse", "delay",
                                "throttle", "slice"})
LINK_FAULT_WINDOW = 30.0  # device seconds: a poll with all its attempts, timeouts and backoff


@dataclass(frozen=True)
class LedgerRead:
    """One request the simulator served (a read or a write), in the stack's device time."""

    seq: int
    time: float  # stack device seconds
    sim_time: float
    operation: str
    start: int
    count: int
    values: tuple[int, ...]
    outcome: str

    @property
    def delivered(self) -> bool:
        return self.outcome in ("ok", "delay")


@dataclass(frozen=True)
class Accepted:
    """A sample the device accepted: its register block, and the ledger read it came from."""

    time: float
    boot: int
    layout: tuple[Any, ...]  # what the batch is laid out by (the register selection, or the block read)
    start: int
    values: tuple[int, ...]
    read: LedgerRead | None = None  # None: not served by the simulator (a failure marker, or unknown)
    marker: bool = False  # the failure marker 0xFFFF the firmware stores as a sample (§11.2.10)

    def value(self, address: int) -> int | None:
        offset = address - self.start
        return self.values[offset] if 0 <= offset < len(self.values) else None


@dataclass(frozen=True)
class DeviceEvent:
    time: float  # stack device seconds
    kind: str  # the event's label: boot, queue_overflow, upload_ok...
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredSample:
    index: int  # sample number in its packet
    addresses: tuple[int, ...]
    values: tuple[int, ...]
    duplicated: bool = False  # a register of this sample was stored twice


@dataclass
class StoredPacket:
    key: tuple[Any, Any]  # boot id, packet timestamp
    status: str  # decoded, ambiguous, undecodable
    codec: str
    reason: str
    samples: list[StoredSample] = field(default_factory=list)


@dataclass
class Batch:
    samples: list[Accepted]
    boot: int
    complete: bool
    fate: str | None = None
    packet: StoredPacket | None = None

    @property
    def end(self) -> float:
        return self.samples[-1].time


@dataclass
class Accounting:
    """How one device's samples ended up."""

    device_id: str
    served: int = 0  # reads the simulator delivered
    accepted: int = 0  # samples the device took
    matched: int = 0  # samples in the cloud exactly once
    explained: dict[str, int] = field(default_factory=dict)  # reason -> samples
    missing: list[Accepted] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    not_accepted: int = 0  # delivered reads the device did not take (late, link faults, retries)
    notes: list[str] = field(default_factory=list)

    def explain(self, reason: str, samples: int) -> None:
        self.explained[reason] = self.explained.get(reason, 0) + samples


def register_name(address: int) -> str:
    return REGISTERS[address].name if 0 <= address < len(REGISTERS) else str(address)


def describe(sample: Accepted) -> str:
    values = " ".join(f"{register_name(sample.start + k)}={v}" for k, v in enumerate(sample.values))
    if sample.read is None:
        return f"accepted at t={sample.time:.1f} s (no ledger read): {values}"
    read = sample.read
    return f"seq {read.seq} at t={read.time:.1f} s (sim {read.sim_time:.1f} s): {values}"


# --- building the inputs --------------------------------------------------------------------------------


def stored_packets(rows: Sequence[dict[str, Any]], packets: Sequence[dict[str, Any]]) -> list[StoredPacket]:
    """The cloud's packets in the order it stored them, each with its decoded samples (from the
    telemetry rows, one per register)."""
    by_key: dict[tuple[Any, Any], StoredPacket] = {}
    for p in sorted(packets, key=lambda p: p["id"]):
        key = (p.get("boot_id"), p.get("packet_ts"))
        by_key.setdefault(key, StoredPacket(key, str(p.get("status")), str(p.get("codec", "")),
                                            str(p.get("reason") or "")))
    grouped: dict[tuple[Any, Any, Any], dict[int, int]] = {}
    duplicated: set[tuple[Any, Any, Any]] = set()
    for row in sorted(rows, key=lambda r: r["id"]):
        key = (row.get("boot_id"), row.get("packet_ts"), row.get("sample_index"))
        registers = grouped.setdefault(key, {})
        if int(row["address"]) in registers:
            duplicated.add(key)
        registers[int(row["address"])] = int(row["raw"])
        if key[:2] not in by_key:  # rows of a packet the listing did not show
            by_key[key[:2]] = StoredPacket(key[:2], str(row.get("status", "decoded")), str(row.get("codec", "")), "")
    for key, registers in grouped.items():
        addresses = tuple(sorted(registers))
        by_key[key[:2]].samples.append(StoredSample(int(key[2] or 0), addresses,
                                                    tuple(registers[a] for a in addresses), key in duplicated))
    for packet in by_key.values():
        packet.samples.sort(key=lambda s: s.index)
    return list(by_key.values())


def link_to_reads(accepted: Sequence[Accepted], reads: Sequence[LedgerRead]) -> tuple[list[Accepted], int]:
    """Give each accepted sample the ledger read it came from (the latest delivered read at or before
    it with that block and values); returns the samples and how many delivered reads none took."""
    delivered = [r for r in reads if r.delivered]
    times = [r.time for r in delivered]
    used: set[int] = set()
    linked = []
    for sample in accepted:
        if sample.marker:
            linked.append(sample)
            continue
        position = bisect.bisect_right(times, sample.time + TIME_SLACK) - 1
        found = None
        while position >= 0 and sample.time - delivered[position].time <= LINK_FAULT_WINDOW:
            read = delivered[position]
            if position not in used and read.start == sample.start and read.values[:len(sample.values)] == sample.values:
                found = position
                break
            position -= 1
        if found is None:
            linked.append(sample)
            continue
        used.add(found)
        linked.append(Accepted(sample.time, sample.boot, sample.layout, sample.start, sample.values,
                               delivered[found], sample.marker))
    return linked, len(delivered) - len(used)


def infer_accepted(reads: Sequence[LedgerRead], boots: Sequence[float],
                   link_faults: Sequence[float]) -> tuple[list[Accepted], int]:
    """Without a probe on the device: every read delivered intact, except those answered late or near a
    fault on the inverter link. Returns the samples and how many delivered reads were left out."""
    faults = sorted(link_faults)
    accepted = []
    left_out = 0
    for read in reads:
        if not read.delivered:
            continue
        k = bisect.bisect_left(faults, read.time - 1.0)
        if read.outcome == "delay" or (k < len(faults) and faults[k] <= read.time + LINK_FAULT_WINDOW):
            left_out += 1
            continue
        boot = max(0, bisect.bisect_right(boots, read.time) - 1)
        accepted.append(Accepted(read.time, boot, (read.start, read.count), read.start, read.values, read))
    return accepted, left_out


# --- the bookkeeping ------------------------------------------------------------------------------------


def batches_of(accepted: Sequence[Accepted]) -> list[Batch]:
    """Cut the accepted samples into the firmware's batches of 7 (a new boot or another selection
    abandons the batch being filled)."""
    batches: list[Batch] = []
    current: list[Accepted] = []
    for sample in accepted:
        if current and (sample.boot != current[0].boot or sample.layout != current[0].layout):
            batches.append(Batch(current, current[0].boot, complete=False))
            current = []
        current.append(sample)
        if len(current) == BATCH:
            batches.append(Batch(current, sample.boot, complete=True))
            current = []
    if current:
        batches.append(Batch(current, current[0].boot, complete=False))
    return batches


def _projection(batch: Batch, addresses: tuple[int, ...]) -> tuple[tuple[int | None, ...], ...]:
    return tuple(tuple(s.value(a) for a in addresses) for s in batch.samples)


def _packet_values(packet: StoredPacket) -> tuple[tuple[int, ...], ...]:
    return tuple(s.values for s in packet.samples)


def match_packets(batches: Sequence[Batch], packets: Sequence[StoredPacket], account: Accounting) -> None:
    """Give each stored packet the batch it holds: equal values sample by sample, the first such batch
    after the one the previous packet held (or, out of order, any free one)."""
    complete = [b for b in batches if b.complete]
    index: dict[tuple[Any, ...], dict[Any, list[int]]] = {}
    last = -1
    for packet in packets:
        if not packet.samples:
            continue
        addresses = packet.samples[0].addresses
        if any(s.addresses != addresses for s in packet.samples):
            continue  # a packet with a ragged layout matches nothing; its samples are reported below
        table = index.get(addresses)
        if table is None:
            table = defaultdict(list)
            for n, batch in enumerate(complete):
                table[_projection(batch, addresses)].append(n)
            index[addresses] = table
        candidates = table.get(_packet_values(packet), [])
        free = [n for n in candidates if complete[n].packet is None]
        chosen = next((n for n in free if n > last), free[0] if free else None)
        for sample in packet.samples:
            if sample.duplicated:
                account.duplicates.append(f"{_stored_text(packet, sample)} (a register stored twice)")
        if chosen is not None:
            complete[chosen].packet = packet
            complete[chosen].fate = "in the cloud"
            last = max(last, chosen)
            continue
        if candidates:
            account.duplicates += [f"{_stored_text(packet, s)} (stored again)" for s in packet.samples]
        elif packet.status == "decoded":
            account.unexpected += [_stored_text(packet, s) for s in packet.samples]


def _stored_text(packet: StoredPacket, sample: StoredSample) -> str:
    pairs = " ".join(f"{register_name(a)}={v}" for a, v in zip(sample.addresses, sample.values, strict=True))
    how = "" if packet.status == "decoded" else f" ({packet.status} {packet.codec} packet)"
    return f"boot {packet.key[0]} packet {packet.key[1]} sample {sample.index}{how}: {pairs}"


def reconcile(device_id: str, reads: Sequence[LedgerRead], accepted: Sequence[Accepted] | None,
              events: Sequence[DeviceEvent] | None, packets: Sequence[StoredPacket],
              uploads: Sequence[dict[str, Any]], link_faults: Sequence[float],
              in_ram: tuple[int, int] | None) -> Accounting:
    """The fate of every accepted sample of one device (see the module docstring).

    `accepted`: from the DUT's probe, `boot` counting the device's boots from 0 (None: infer from the
    ledger); `events`: the device's stream (None: not observable); `link_faults`: device times of faults
    on its inverter link; `in_ram`: (samples in the batch being filled, packets queued) now (None: not
    observable)."""
    account = Accounting(device_id)
    account.served = sum(1 for r in reads if r.delivered)
    events = list(events or [])
    boots = [e.time for e in events if e.kind == "boot"]
    boot_reasons = [str(e.details.get("reason", "")) for e in events if e.kind == "boot"]
    if accepted is None:
        samples, account.not_accepted = infer_accepted(reads, boots, link_faults)
        account.notes.append("what the device accepted is inferred from the ledger (no probe on the device)")
    else:
        samples, account.not_accepted = link_to_reads(accepted, reads)
    if not events:
        account.notes.append("the device's events are not observable: drops and reboots cannot be told apart")
    account.accepted = len(samples)
    batches = batches_of(samples)
    match_packets(batches, packets, account)
    # Batches the device dropped itself, each named by an event at the moment it was completed.
    ends = [b.end for b in batches]
    for event in events:
        if event.kind not in ("queue_overflow", "compression_failed"):
            continue
        k = bisect.bisect_right(ends, event.time + TIME_SLACK) - 1
        while k >= 0 and (batches[k].fate is not None or not batches[k].complete):
            k -= 1
        if k >= 0 and event.time - batches[k].end <= 1.0:
            what = "queue full" if event.kind == "queue_overflow" else "compression failed"
            batches[k].fate = f"{what}: packet dropped by the device"
    _stored_inexactly(batches, packets)
    _unparsable_uploads(batches, events, uploads)
    current = len(boots) - 1 if boots else max((b.boot for b in batches), default=0)
    _lost_or_pending(batches, current, boots, boot_reasons, in_ram)
    for batch in batches:
        if batch.fate is None:
            account.missing += batch.samples
        elif batch.fate == "in the cloud":
            account.matched += len(batch.samples)
        else:
            account.explain(batch.fate, len(batch.samples))
    return account


def _stored_inexactly(batches: Sequence[Batch], packets: Sequence[StoredPacket]) -> None:
    """A packet the cloud could not decode exactly holds the first free batch after the batch the packet
    stored before it holds."""
    position = {id(b.packet): n for n, b in enumerate(batches) if b.packet is not None}
    last = -1
    for packet in packets:
        if id(packet) in position:
            last = max(last, position[id(packet)])
            continue
        if packet.status == "decoded":
            continue
        k = next((n for n in range(last + 1, len(batches)) if batches[n].fate is None and batches[n].complete), None)
        if k is not None:
            batches[k].fate = f"stored by the cloud as {packet.status} ({packet.reason or packet.codec})"
            last = k


def _unparsable_uploads(batches: Sequence[Batch], events: Sequence[DeviceEvent],
                        uploads: Sequence[dict[str, Any]]) -> None:
    """An upload the cloud accepted but could not read (its document cut or malformed) took the oldest
    batches still waiting when it was sent: as many as the device says it carried."""
    lost = {u.get("nonce"): u for u in uploads
            if u.get("verdict") == "accepted" and u.get("reason") and not u.get("packets")}
    if not lost:
        return
    for event in events:
        upload = lost.get(event.details.get("nonce")) if event.kind == "upload_ok" else None
        if upload is None:
            continue
        carried = int(event.details.get("packets") or 0)
        waiting = [b for b in batches if b.fate is None and b.complete and b.end <= event.time + TIME_SLACK]
        for batch in waiting[:carried]:
            batch.fate = f"in upload {upload.get('nonce')}, which the cloud could not read ({upload.get('reason')})"


def _lost_or_pending(batches: Sequence[Batch], current: int, boots: Sequence[float], boot_reasons: Sequence[str],
                     in_ram: tuple[int, int] | None) -> None:
    """Batches after the last one that reached the cloud from each boot: lost with the RAM at the next
    boot, or, in the running boot (`current`), still on the device (as many as it holds)."""
    last_stored: dict[int, int] = {}
    for n, batch in enumerate(batches):
        if batch.fate == "in the cloud":
            last_stored[batch.boot] = n
    waiting_current: list[Batch] = []
    for n, batch in enumerate(batches):
        if batch.fate is not None:
            continue
        if batch.boot < current:
            if n > last_stored.get(batch.boot, -1) or not batch.complete:
                k = batch.boot + 1
                when = f" at t={boots[k]:.1f} s ({boot_reasons[k]})" if k < len(boots) else ""
                batch.fate = "in RAM when the device restarted" + when
        elif not batch.complete:
            if batch is batches[-1] and batch.boot == current:
                batch.fate = "still on the device (the batch being filled)"
            else:
                batch.fate = "batch being filled when the register selection changed (discarded)"
        elif n > last_stored.get(batch.boot, -1):
            waiting_current.append(batch)
    if in_ram is None:
        for batch in waiting_current:
            batch.fate = "not uploaded yet (the device's RAM is not observable)"
        return
    queued = in_ram[1]
    for batch in waiting_current[len(waiting_current) - queued:] if queued else []:
        batch.fate = "still on the device (queued)"
