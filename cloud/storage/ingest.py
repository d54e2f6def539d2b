"""Secured uploads: the anti-replay nonce, the upload log, packets, samples and decoder state.

`ingest` is ONE transaction: check the nonce is strictly greater than the stored one and advance it,
record the upload, store packets and samples (a packet already stored under the same device, boot,
packet timestamp and content hash is recognised, not stored again), save the decoder state, store
the reply for a byte-identical resend, and enqueue outbox messages. All of it or nothing.

Concurrency: on PostgreSQL the conditional upsert of the nonce (`... DO UPDATE ... WHERE last_nonce
< n`) takes the device's nonce row lock and re-checks the condition on the newest row, so concurrent
ingests of one device (from any number of processes) run one after the other and exactly one can
advance to a given nonce. On SQLite the single writer runs them one after the other anyway.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from cloud.storage.backend import Backend, Row, StorePart, Transaction
from cloud.storage.devices import ensure_device
from cloud.storage.outbox import insert_messages
from cloud.storage.records import (
    SAMPLE_ID_STRIDE,
    BatchSamples,
    IngestRequest,
    IngestResult,
    NonceState,
    Packet,
    PacketIn,
    PacketStats,
    PacketStatus,
    StoredPacket,
    TelemetrySample,
    Upload,
    Verdict,
)

_UPLOAD = ("id, device_id, nonce, verdict, reason, packets, new_packets, samples, body_bytes, envelope_sha256, "
           "received_at")
_PACKET = ("id, device_id, boot_id, packet_ts, content_sha256, codec, status, reason, sample_count, raw_hex, "
           "upload_id, received_at")
_NONCE = "device_id, last_nonce, last_envelope_sha256, last_upload_id, updated_at"
_TELEMETRY_PACKET = "id, device_id, boot_id, packet_ts, codec, status, received_at, sample_rows"
_TELEMETRY_BATCH = 200  # packets read per query while collecting a page of samples


def _upload(row: Row) -> Upload:
    return Upload(row["id"], row["device_id"], row["nonce"], row["verdict"], row["reason"], row["packets"],
                  row["new_packets"], row["samples"], row["body_bytes"], row["envelope_sha256"], row["received_at"])


def _packet(row: Row) -> Packet:
    return Packet(row["id"], row["device_id"], row["boot_id"], row["packet_ts"], row["content_sha256"],
                  row["codec"], PacketStatus(row["status"]), row["reason"], row["sample_count"], row["raw_hex"],
                  row["upload_id"], row["received_at"])


def _nonce(row: Row) -> NonceState:
    return NonceState(row["device_id"], row["last_nonce"], row["last_envelope_sha256"], row["last_upload_id"],
                      row["updated_at"])


def _sample_rows(packet: PacketIn, now: float) -> tuple[str | None, float | None, float | None]:
    """A packet's samples as stored in its row (JSON), and the first and last time among them.

    Whole batches at one time are `{"at", "layout", "raw"}`; any other samples are a list of
    `[index, address, raw, device_ms, sampled_at]`. A sample without a time was taken `now`.
    """
    samples = packet.samples
    if not samples:
        return None, None, None
    if isinstance(samples, BatchSamples):
        batch = {"at": samples.sampled_at, "layout": samples.layout, "raw": samples.raw}
        return json.dumps(batch, separators=(",", ":")), samples.sampled_at, samples.sampled_at
    rows = [(s.index, s.address, s.raw, s.device_ms, now if s.sampled_at is None else s.sampled_at) for s in samples]
    times = [r[4] for r in rows]
    return json.dumps(rows, separators=(",", ":")), min(times), max(times)


def _stored_rows(text: str) -> list[Sequence[Any]]:
    """`[index, address, raw, device_ms, sampled_at]` per sample, from either stored form."""
    stored = json.loads(text)
    if isinstance(stored, dict):
        layout, at = stored["layout"], stored["at"]
        n = len(layout)
        return [(k // n, layout[k % n], raw, None, at) for k, raw in enumerate(stored["raw"])]
    rows: list[Sequence[Any]] = stored
    return rows


def _samples_of(row: Row) -> list[TelemetrySample]:
    """The samples stored in one packet row, with their ids."""
    packet_id = row["id"]
    status = PacketStatus(row["status"])
    return [TelemetrySample(packet_id * SAMPLE_ID_STRIDE + k, row["device_id"], packet_id, index, address, raw,
                            device_ms, sampled_at, row["received_at"], row["boot_id"], row["packet_ts"],
                            row["codec"], status)
            for k, (index, address, raw, device_ms, sampled_at) in enumerate(_stored_rows(row["sample_rows"]))]


async def _insert_upload(tx: Transaction, device_id: str, nonce: int | None, verdict: str, reason: str | None,
                         packets: int, body_bytes: int, envelope_sha256: str | None, now: float, *,
                         new_packets: int = 0, samples: int = 0) -> int:
    upload_id = await tx.fetchval(
        "INSERT INTO uploads (device_id, nonce, verdict, reason, packets, new_packets, samples, body_bytes, "
        "envelope_sha256, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        device_id, nonce, verdict, reason, packets, new_packets, samples, body_bytes, envelope_sha256, now,
    )
    return int(upload_id)


async def _refuse(tx: Transaction, request: IngestRequest, now: float) -> IngestResult:
    """The nonce did not advance: a byte-identical resend of the last accepted envelope, or a replay."""
    row = await tx.fetchrow(
        "SELECT last_nonce, last_envelope_sha256, last_reply FROM nonces WHERE device_id = ?", request.device_id
    )
    assert row is not None
    resend = row["last_nonce"] == request.nonce and row["last_envelope_sha256"] == request.envelope_sha256
    verdict = Verdict.RESEND if resend else Verdict.REPLAY
    reason = None if resend else "nonce not greater than the last accepted one"
    upload_id = await _insert_upload(tx, request.device_id, request.nonce, verdict, reason, 0, request.body_bytes,
                                     request.envelope_sha256, now)
    return IngestResult(verdict, upload_id, request.device_id, request.nonce,
                        reply=row["last_reply"] if resend else None)


async def _store_packets(tx: Transaction, request: IngestRequest, packets: Sequence[PacketIn], upload_id: int,
                         now: float) -> tuple[list[StoredPacket], int]:
    stored: list[StoredPacket] = []
    samples = 0
    for packet in packets:
        key = (request.device_id, packet.boot_id, packet.packet_ts, packet.content_sha256)
        if len(packet.samples) >= SAMPLE_ID_STRIDE:
            raise ValueError(f"a packet of {len(packet.samples)} samples: the decoders make fewer")
        rows, sampled_from, sampled_until = _sample_rows(packet, now)
        packet_id = await tx.fetchval(
            "INSERT INTO packets (device_id, boot_id, packet_ts, content_sha256, codec, status, reason, sample_count, "
            "raw_hex, upload_id, received_at, sample_rows, sampled_from, sampled_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, boot_id, packet_ts, content_sha256) DO NOTHING RETURNING id",
            *key, packet.codec, str(packet.status), packet.reason, len(packet.samples), packet.raw_hex, upload_id,
            now, rows, sampled_from, sampled_until,
        )
        if packet_id is None:  # stored before: a re-send after a lost acknowledgement
            existing = await tx.fetchrow(
                "SELECT id, status FROM packets WHERE device_id = ? AND boot_id = ? AND packet_ts = ? "
                "AND content_sha256 = ?", *key,
            )
            assert existing is not None
            stored.append(StoredPacket(existing["id"], False, PacketStatus(existing["status"])))
            continue
        samples += len(packet.samples)
        stored.append(StoredPacket(packet_id, True, PacketStatus(packet.status)))
    return stored, samples


async def ingest_once(tx: Transaction, request: IngestRequest, now: float, *,
                      device_stored: bool = False) -> IngestResult:
    """`device_stored`: the device's row is known to exist (devices are never deleted), one statement less."""
    device_id = request.device_id
    if not device_stored:
        await ensure_device(tx, device_id, now)
    # Insert or advance the nonce, in one statement; a row is written only if the nonce is greater, and
    # only then does it come back, with the decoder state kept beside the nonce. From here the row is
    # ours until commit (on PostgreSQL, its lock), so that state cannot change under us.
    advanced = await tx.fetchrow(
        "INSERT INTO nonces (device_id, last_nonce, last_envelope_sha256, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (device_id) DO UPDATE SET last_nonce = excluded.last_nonce, "
        "last_envelope_sha256 = excluded.last_envelope_sha256, last_reply = NULL, updated_at = excluded.updated_at "
        "WHERE nonces.last_nonce IS NULL OR nonces.last_nonce < excluded.last_nonce RETURNING codec_state",
        device_id, request.nonce, request.envelope_sha256, now,
    )
    if advanced is None:
        return await _refuse(tx, request, now)

    state = advanced["codec_state"]
    decoded = request.decode(state)
    # Counted as if every packet were new: only a re-send after a lost acknowledgement needs correcting.
    expected = sum(len(p.samples) for p in decoded.packets)
    upload_id = await _insert_upload(tx, device_id, request.nonce, Verdict.ACCEPTED, decoded.reason,
                                     len(decoded.packets), request.body_bytes, request.envelope_sha256, now,
                                     new_packets=len(decoded.packets), samples=expected)
    stored, samples = await _store_packets(tx, request, decoded.packets, upload_id, now)
    await tx.execute(
        "UPDATE devices SET last_seen = ?, first_seen = COALESCE(first_seen, ?) WHERE device_id = ?",
        now, now, device_id,
    )
    counted = IngestResult(Verdict.ACCEPTED, upload_id, device_id, request.nonce, tuple(stored), samples)
    if counted.new_packets != len(decoded.packets) or samples != expected:
        await tx.execute("UPDATE uploads SET new_packets = ?, samples = ? WHERE id = ?",
                         counted.new_packets, samples, upload_id)
    result = IngestResult(Verdict.ACCEPTED, upload_id, device_id, request.nonce, counted.packets, samples,
                          request.reply(counted))
    await tx.execute("UPDATE nonces SET last_reply = ?, last_upload_id = ?, codec_state = COALESCE(?, codec_state) "
                     "WHERE device_id = ?", result.reply, upload_id, decoded.codec_state, device_id)
    await insert_messages(tx, request.outbox(result), now)
    return result


class IngestStore(StorePart):
    def __init__(self, backend: Backend, wall_clock: Callable[[], float]) -> None:
        super().__init__(backend, wall_clock)
        self._stored_devices: set[str] = set()  # devices whose row this process saw committed

    async def ingest(self, request: IngestRequest) -> IngestResult:
        """Store one authentic upload exactly once (see the module docstring); returns when committed."""
        device_stored = request.device_id in self._stored_devices

        async def work(tx: Transaction) -> IngestResult:
            return await ingest_once(tx, request, self._clock(), device_stored=device_stored)

        result = await self._backend.write(work)
        self._stored_devices.add(request.device_id)
        return result

    async def record_rejected_upload(self, device_id: str, verdict: str, *, nonce: int | None = None,
                                     reason: str | None = None, body_bytes: int = 0,
                                     envelope_sha256: str | None = None) -> int:
        """Log an upload refused before `ingest` (bad MAC, malformed envelope...); its id."""

        async def work(tx: Transaction) -> int:
            return await _insert_upload(tx, device_id, nonce, verdict, reason, 0, body_bytes, envelope_sha256,
                                        self._clock())

        return await self._backend.write(work)

    async def list_uploads(self, device_id: str | None = None, *, after_id: int = 0, limit: int = 100,
                           newest_first: bool = False) -> list[Upload]:
        where, args = ("WHERE id > ?", [after_id]) if device_id is None else (
            "WHERE device_id = ? AND id > ?", [device_id, after_id])
        order = "DESC" if newest_first else "ASC"
        return await self._all(_upload, f"SELECT {_UPLOAD} FROM uploads {where} ORDER BY id {order} LIMIT ?",
                               *args, limit)

    async def list_packets(self, device_id: str, *, after_id: int = 0, limit: int = 1000) -> list[Packet]:
        return await self._all(
            _packet, f"SELECT {_PACKET} FROM packets WHERE device_id = ? AND id > ? ORDER BY id LIMIT ?",
            device_id, after_id, limit,
        )

    async def telemetry(self, device_id: str, *, since: float | None = None, until: float | None = None,
                        after_id: int = 0, limit: int = 1000) -> list[TelemetrySample]:
        """Stored samples in storage order (ids ascend), optionally within [since, until) of sampled_at."""
        conditions, args = ["device_id = ?", "sample_rows IS NOT NULL"], [device_id]
        if since is not None:
            conditions.append("sampled_until >= ?")
            args.append(since)
        if until is not None:
            conditions.append("sampled_from < ?")
            args.append(until)
        where = " AND ".join(conditions)

        async def work(tx: Transaction) -> list[TelemetrySample]:
            found: list[TelemetrySample] = []
            next_packet = after_id // SAMPLE_ID_STRIDE
            while len(found) < limit:
                rows = await tx.fetch(f"SELECT {_TELEMETRY_PACKET} FROM packets WHERE {where} AND id >= ? "
                                      "ORDER BY id LIMIT ?", *args, next_packet, _TELEMETRY_BATCH)
                for row in rows:
                    found += [s for s in _samples_of(row) if s.id > after_id
                              and (since is None or s.sampled_at >= since) and (until is None or s.sampled_at < until)]
                if len(rows) < _TELEMETRY_BATCH:
                    break
                next_packet = rows[-1]["id"] + 1
            return found[:limit]

        return await self._backend.read(work)

    async def packet_stats(self, device_id: str | None = None) -> list[PacketStats]:
        where, args = ("", []) if device_id is None else ("WHERE device_id = ?", [device_id])
        return await self._all(
            lambda r: PacketStats(r["codec"], PacketStatus(r["status"]), r["packets"], r["samples"]),
            f"SELECT codec, status, COUNT(*) AS packets, SUM(sample_count) AS samples FROM packets {where} "
            "GROUP BY codec, status ORDER BY codec, status",
            *args,
        )

    async def upload_verdicts(self, device_id: str | None = None) -> dict[str, int]:
        """How many uploads got each verdict (accepted, resend, replay, and the service's rejections)."""
        where, args = ("", []) if device_id is None else ("WHERE device_id = ?", [device_id])
        rows = await self._all(lambda r: (str(r["verdict"]), int(r["n"])),
                               f"SELECT verdict, COUNT(*) AS n FROM uploads {where} GROUP BY verdict", *args)
        return dict(rows)

    async def codec_state(self, device_id: str) -> str | None:
        rows = await self._backend.query("SELECT codec_state FROM nonces WHERE device_id = ?", device_id)
        return rows[0]["codec_state"] if rows else None

    # --- anti-replay state (a device whose nonce was reset has none, but keeps its decoder state) ---

    async def nonce_state(self, device_id: str) -> NonceState | None:
        return await self._one(_nonce, f"SELECT {_NONCE} FROM nonces WHERE device_id = ? AND last_nonce IS NOT NULL",
                               device_id)

    async def list_nonce_states(self) -> list[NonceState]:
        return await self._all(_nonce, f"SELECT {_NONCE} FROM nonces WHERE last_nonce IS NOT NULL ORDER BY device_id")

    async def reset_nonces(self, device_id: str | None = None) -> int:
        """Forget the last accepted nonce (of one device, or all): any nonce is accepted next."""
        forget = ("UPDATE nonces SET last_nonce = NULL, last_envelope_sha256 = NULL, last_reply = NULL, "
                  "last_upload_id = NULL WHERE last_nonce IS NOT NULL")
        if device_id is None:
            return await self._change(forget)
        return await self._change(forget + " AND device_id = ?", device_id)
