"""Numbered schema migrations, applied at open and recorded in `schema_version`.

Each migration is a list of statements in the shared spelling of `dialect.py` (`${ID}`, `${ROW_ID}`,
`${BIGINT}`, `${REAL}` in column types), optionally followed by a data step in Python (for moves the
two dialects would spell differently). Append new migrations; never edit an applied one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cloud.storage.backend import Transaction


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    data: Callable[[Transaction], Awaitable[None]] | None = None


async def _samples_into_packets(tx: Transaction) -> None:
    """Copy each packet's sample rows into its `sample_rows` (in their stored order)."""
    rows = await tx.fetch("SELECT packet_id, sample_index, address, raw, device_ms, sampled_at FROM samples "
                          "ORDER BY packet_id, id")
    grouped: dict[int, list[list[object]]] = {}
    for r in rows:
        grouped.setdefault(int(r["packet_id"]), []).append(
            [r["sample_index"], r["address"], r["raw"], r["device_ms"], r["sampled_at"]])
    for packet_id, samples in grouped.items():
        times = [float(s[4]) for s in samples]  # type: ignore[arg-type]  # sampled_at is NOT NULL
        await tx.execute("UPDATE packets SET sample_rows = ?, sampled_from = ?, sampled_until = ? WHERE id = ?",
                         json.dumps(samples, separators=(",", ":")), min(times), max(times), packet_id)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "devices, security and telemetry", (
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            key_hex TEXT,
            state TEXT NOT NULL DEFAULT 'active',
            firmware_version TEXT,
            created_at ${REAL} NOT NULL,
            first_seen ${REAL},
            last_seen ${REAL})""",
        """CREATE TABLE operator_tokens (
            name TEXT PRIMARY KEY,
            token_sha256 TEXT NOT NULL UNIQUE,
            created_at ${REAL} NOT NULL)""",
        """CREATE TABLE nonces (
            device_id TEXT PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
            last_nonce ${BIGINT},
            last_envelope_sha256 TEXT,
            last_reply TEXT,
            last_upload_id ${BIGINT},
            updated_at ${REAL})""",
        # Every upload, rejected ones included; no foreign key: rejected ones may name unknown devices.
        """CREATE TABLE uploads (
            id ${ID},
            device_id TEXT NOT NULL,
            nonce ${BIGINT},
            verdict TEXT NOT NULL,
            reason TEXT,
            packets INTEGER NOT NULL DEFAULT 0,
            new_packets INTEGER NOT NULL DEFAULT 0,
            samples INTEGER NOT NULL DEFAULT 0,
            body_bytes INTEGER NOT NULL DEFAULT 0,
            envelope_sha256 TEXT,
            received_at ${REAL} NOT NULL)""",
        "CREATE INDEX uploads_by_device ON uploads (device_id, id)",
        # The unique key recognises a packet re-sent after a lost acknowledgement.
        """CREATE TABLE packets (
            id ${ID},
            device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
            boot_id INTEGER NOT NULL,
            packet_ts ${BIGINT} NOT NULL,
            content_sha256 TEXT NOT NULL,
            codec TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            sample_count INTEGER NOT NULL,
            raw_hex TEXT,
            upload_id ${BIGINT} NOT NULL REFERENCES uploads (id),
            received_at ${REAL} NOT NULL,
            UNIQUE (device_id, boot_id, packet_ts, content_sha256))""",
        # The hot table: no uniqueness of its own (a packet's samples are inserted only with the
        # packet, which is unique) and a plain row id, to keep each insert cheap.
        """CREATE TABLE samples (
            id ${ROW_ID},
            device_id TEXT NOT NULL,
            packet_id ${BIGINT} NOT NULL REFERENCES packets (id),
            sample_index INTEGER NOT NULL,
            address INTEGER NOT NULL,
            raw INTEGER NOT NULL,
            device_ms ${BIGINT},
            sampled_at ${REAL} NOT NULL,
            received_at ${REAL} NOT NULL)""",
        "CREATE INDEX samples_by_device_time ON samples (device_id, sampled_at)",
        "CREATE INDEX samples_by_device_id ON samples (device_id, id)",
        """CREATE TABLE codec_states (
            device_id TEXT PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
            state TEXT NOT NULL,
            updated_at ${REAL} NOT NULL)""",
    )),
    Migration(2, "commands and configuration", (
        """CREATE TABLE commands (
            id ${ID},
            command_id TEXT NOT NULL UNIQUE,
            device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
            type TEXT NOT NULL,
            params TEXT NOT NULL,
            status TEXT NOT NULL,
            delivery_count INTEGER NOT NULL DEFAULT 0,
            lease_expires_at ${REAL},
            result TEXT,
            created_at ${REAL} NOT NULL,
            delivered_at ${REAL},
            completed_at ${REAL})""",
        "CREATE INDEX commands_by_device ON commands (device_id, status, id)",
        """CREATE TABLE config_versions (
            device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            config TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at ${REAL} NOT NULL,
            delivered_at ${REAL},
            ack_outcome TEXT,
            ack_details TEXT,
            acked_at ${REAL},
            PRIMARY KEY (device_id, version))""",
    )),
    Migration(3, "firmware repository, rollouts and OTA sessions", (
        """CREATE TABLE firmware (
            version TEXT PRIMARY KEY,
            device_type TEXT NOT NULL,
            path TEXT NOT NULL,
            original_size ${BIGINT} NOT NULL,
            encrypted_size ${BIGINT} NOT NULL,
            sha256 TEXT NOT NULL,
            encrypted_sha256 TEXT NOT NULL,
            security_counter INTEGER NOT NULL,
            manifest TEXT NOT NULL,
            created_at ${REAL} NOT NULL)""",
        """CREATE TABLE rollouts (
            id ${ID},
            name TEXT NOT NULL UNIQUE,
            version TEXT NOT NULL REFERENCES firmware (version),
            state TEXT NOT NULL,
            created_at ${REAL} NOT NULL,
            updated_at ${REAL} NOT NULL)""",
        """CREATE TABLE rollout_targets (
            rollout_id ${BIGINT} NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
            device_id TEXT NOT NULL,
            state TEXT NOT NULL,
            detail TEXT,
            updated_at ${REAL} NOT NULL,
            PRIMARY KEY (rollout_id, device_id))""",
        "CREATE INDEX rollout_targets_by_device ON rollout_targets (device_id)",
        """CREATE TABLE ota_sessions (
            session_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL,
            total_chunks INTEGER NOT NULL,
            chunks_served INTEGER NOT NULL DEFAULT 0,
            bytes_served ${BIGINT} NOT NULL DEFAULT 0,
            started_at ${REAL} NOT NULL,
            last_activity ${REAL} NOT NULL,
            finished_at ${REAL})""",
        "CREATE INDEX ota_sessions_by_device ON ota_sessions (device_id, status)",
        """CREATE TABLE ota_reports (
            id ${ID},
            device_id TEXT NOT NULL,
            session_id TEXT,
            kind TEXT NOT NULL,
            status TEXT,
            detail TEXT NOT NULL,
            reported_at ${REAL} NOT NULL)""",
        "CREATE INDEX ota_reports_by_device ON ota_reports (device_id, id)",
    )),
    Migration(4, "diagnostics, faults and the MQTT outbox", (
        """CREATE TABLE diagnostics (
            id ${ID},
            device_id TEXT NOT NULL,
            document TEXT NOT NULL,
            received_at ${REAL} NOT NULL)""",
        "CREATE INDEX diagnostics_by_device ON diagnostics (device_id, id)",
        """CREATE TABLE fault_rules (
            id ${ID},
            kind TEXT NOT NULL,
            device_id TEXT,
            probability ${REAL} NOT NULL,
            params TEXT NOT NULL,
            created_at ${REAL} NOT NULL,
            expires_at ${REAL},
            cleared_at ${REAL})""",
        """CREATE TABLE fault_events (
            id ${ID},
            rule_id ${BIGINT},
            kind TEXT NOT NULL,
            device_id TEXT,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            injected_at ${REAL} NOT NULL)""",
        """CREATE TABLE outbox (
            id ${ID},
            topic TEXT NOT NULL,
            payload TEXT NOT NULL,
            qos INTEGER NOT NULL,
            retain INTEGER NOT NULL,
            created_at ${REAL} NOT NULL,
            claimed_until ${REAL},
            published_at ${REAL})""",
        "CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL",
    )),
    # A sample row each cost more than the rest of an upload together (three B-trees, 42 rows a
    # packet); a packet's samples are always written and read together, so they live in its row.
    Migration(5, "samples stored with their packet", (
        "ALTER TABLE packets ADD COLUMN sample_rows TEXT",
        "ALTER TABLE packets ADD COLUMN sampled_from ${REAL}",
        "ALTER TABLE packets ADD COLUMN sampled_until ${REAL}",
        "CREATE INDEX packets_by_device ON packets (device_id, id)",
        "CREATE INDEX packets_by_device_time ON packets (device_id, sampled_until)",
    ), data=_samples_into_packets),
    Migration(6, "sample rows retired", ("DROP TABLE samples",)),
    # Read and written with the nonce on every upload: beside it, that is two statements fewer.
    Migration(7, "decoder state kept with the nonce", (
        "ALTER TABLE nonces ADD COLUMN codec_state TEXT",
        "UPDATE nonces SET codec_state = (SELECT state FROM codec_states WHERE codec_states.device_id = "
        "nonces.device_id)",
        "INSERT INTO nonces (device_id, codec_state, updated_at) SELECT device_id, state, updated_at FROM codec_states "
        "WHERE device_id NOT IN (SELECT device_id FROM nonces)",
        "DROP TABLE codec_states",
    )),
)

LATEST_VERSION = MIGRATIONS[-1].version


async def applied_versions(tx: Transaction) -> list[int]:
    rows = await tx.fetch("SELECT version FROM schema_version ORDER BY version")
    return [int(r["version"]) for r in rows]


async def migrate(tx: Transaction, now: float) -> list[int]:
    """Apply every migration not applied yet, in order; the versions applied now."""
    if tx.dialect.migration_lock:
        await tx.execute(tx.dialect.migration_lock)
    await tx.execute(tx.dialect.ddl(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at ${REAL} NOT NULL)"
    ))
    done = set(await applied_versions(tx))
    if done and max(done) > LATEST_VERSION:
        raise RuntimeError(f"the database has schema version {max(done)}, newer than this program's {LATEST_VERSION}")
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            await tx.execute(tx.dialect.ddl(statement))
        if migration.data is not None:
            await migration.data(tx)
        await tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
            migration.version, migration.name, now,
        )
        applied.append(migration.version)
    return applied
