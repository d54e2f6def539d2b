"""Diagnostics documents posted by devices (any JSON object), with a per-device retention limit."""

from __future__ import annotations

from typing import Any

from cloud.storage.backend import Row, StorePart, Transaction, from_json, to_json
from cloud.storage.records import Diagnostic, DiagnosticsSummary

_DIAGNOSTIC = "id, device_id, document, received_at"


def _diagnostic(row: Row) -> Diagnostic:
    return Diagnostic(row["id"], row["device_id"], from_json(row["document"]), row["received_at"])


class DiagnosticsStore(StorePart):
    async def add_diagnostic(self, device_id: str, document: dict[str, Any], *, keep: int = 100) -> Diagnostic:
        """Store a document and drop the device's oldest beyond the newest `keep`."""

        async def work(tx: Transaction) -> Diagnostic:
            row = await tx.fetchrow(
                f"INSERT INTO diagnostics (device_id, document, received_at) VALUES (?, ?, ?) RETURNING {_DIAGNOSTIC}",
                device_id, to_json(document), self._clock(),
            )
            assert row is not None
            await tx.execute(
                "DELETE FROM diagnostics WHERE device_id = ? AND id NOT IN "
                "(SELECT id FROM diagnostics WHERE device_id = ? ORDER BY id DESC LIMIT ?)",
                device_id, device_id, keep,
            )
            return _diagnostic(row)

        return await self._backend.write(work)

    async def list_diagnostics(self, device_id: str | None = None, *, limit: int = 10) -> list[Diagnostic]:
        """Newest first."""
        if device_id is None:
            return await self._all(_diagnostic, f"SELECT {_DIAGNOSTIC} FROM diagnostics ORDER BY id DESC LIMIT ?",
                                   limit)
        return await self._all(
            _diagnostic, f"SELECT {_DIAGNOSTIC} FROM diagnostics WHERE device_id = ? ORDER BY id DESC LIMIT ?",
            device_id, limit,
        )

    async def diagnostics_summary(self) -> list[DiagnosticsSummary]:
        return await self._all(
            lambda r: DiagnosticsSummary(r["device_id"], int(r["n"]), r["first_at"], r["last_at"]),
            "SELECT device_id, COUNT(*) AS n, MIN(received_at) AS first_at, MAX(received_at) AS last_at "
            "FROM diagnostics GROUP BY device_id ORDER BY device_id",
        )

    async def delete_diagnostics(self, device_id: str | None = None) -> int:
        if device_id is None:
            return await self._change("DELETE FROM diagnostics")
        return await self._change("DELETE FROM diagnostics WHERE device_id = ?", device_id)
