"""The MQTT outbox: messages written in the same transaction as the data they describe.

A publisher claims a batch (a lease, so two cloud processes never publish the same row at once and a
crashed publisher's claim runs out), publishes it, then marks it published. Delivery is therefore at
least once; nothing committed is lost while the broker is away.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud.storage.backend import Row, StorePart, Transaction, placeholders
from cloud.storage.records import OutboxEntry, OutboxMessage

_ENTRY = "id, topic, payload, qos, retain, created_at, published_at"


async def insert_messages(tx: Transaction, messages: Sequence[OutboxMessage], now: float) -> None:
    if messages:
        await tx.executemany(
            "INSERT INTO outbox (topic, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?)",
            [(m.topic, m.payload, m.qos, int(m.retain), now) for m in messages],
        )


def _entry(row: Row) -> OutboxEntry:
    return OutboxEntry(row["id"], row["topic"], row["payload"], row["qos"], bool(row["retain"]),
                       row["created_at"], row["published_at"])


class OutboxStore(StorePart):
    async def enqueue_messages(self, messages: Sequence[OutboxMessage]) -> None:
        async def work(tx: Transaction) -> None:
            await insert_messages(tx, messages, self._clock())

        await self._backend.write(work)

    async def claim_outbox(self, limit: int = 100, lease_seconds: float = 30.0) -> list[OutboxEntry]:
        """The oldest unpublished, unclaimed messages, claimed for `lease_seconds`, in id order."""

        async def work(tx: Transaction) -> list[OutboxEntry]:
            now = self._clock()
            rows = await tx.fetch(
                f"UPDATE outbox SET claimed_until = ? WHERE id IN ("
                f"SELECT id FROM outbox WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until <= ?) "
                f"ORDER BY id LIMIT ?{tx.dialect.row_lock}) RETURNING {_ENTRY}",
                now + lease_seconds, now, limit,
            )
            return sorted((_entry(r) for r in rows), key=lambda e: e.id)

        return await self._backend.write(work)

    async def mark_published(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return await self._change(
            f"UPDATE outbox SET published_at = ? WHERE published_at IS NULL AND id IN ({placeholders(len(ids))})",
            self._clock(), *ids,
        )

    async def release_outbox(self, ids: Sequence[int]) -> int:
        """Give claimed messages back at once (publishing failed), instead of waiting for the lease."""
        if not ids:
            return 0
        return await self._change(
            f"UPDATE outbox SET claimed_until = NULL WHERE published_at IS NULL AND id IN ({placeholders(len(ids))})",
            *ids,
        )

    async def pending_outbox(self) -> int:
        async def work(tx: Transaction) -> int:
            return int(await tx.fetchval("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"))

        return await self._backend.read(work)

    async def list_outbox(self, *, after_id: int = 0, limit: int = 100) -> list[OutboxEntry]:
        return await self._all(
            _entry, f"SELECT {_ENTRY} FROM outbox WHERE id > ? ORDER BY id LIMIT ?", after_id, limit
        )

    async def purge_outbox(self, published_before: float) -> int:
        """Delete messages published before a time (the table is a queue, not an archive)."""
        return await self._change(
            "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?", published_before
        )
