"""Device diagnostics: any JSON object up to 64 KiB per post, the newest N kept per device (§8.1).

The reference kept them in memory and appended them to an unbounded file per device (§11.3.10);
here each post is one stored row, a device's oldest beyond the retention limit are dropped in the
same transaction, and the document size is capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud.storage import Diagnostic, DiagnosticsSummary, Storage
from protocol.errors import DocumentError
from protocol.json_wire import load_object

MAX_DOCUMENT_BYTES = 64 * 1024
DEFAULT_KEEP = 100
MAX_LIST_LIMIT = 1000


@dataclass(frozen=True)
class DiagnosticsPolicy:
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    keep_per_device: int = DEFAULT_KEEP


def parse_document(body: bytes) -> dict[str, Any]:
    """The posted object (the size limit is checked before); DocumentError unless it is a JSON object."""
    return load_object(body, DocumentError, "diagnostics document").data


async def store(storage: Storage, device_id: str, document: dict[str, Any], policy: DiagnosticsPolicy
                ) -> Diagnostic:
    return await storage.add_diagnostic(device_id, document, keep=policy.keep_per_device)


def diagnostic_view(entry: Diagnostic) -> dict[str, Any]:
    return {"id": entry.id, "device_id": entry.device_id, "received_at": entry.received_at,
            "document": entry.document}


def summary_view(rows: list[DiagnosticsSummary]) -> dict[str, Any]:
    """The seed's summary shape: totals, and per device the entry count and first/last times."""
    return {
        "total_devices": len(rows),
        "total_entries": sum(r.entries for r in rows),
        "devices": {r.device_id: {"entry_count": r.entries, "first_seen": r.first_at, "last_seen": r.last_at}
                    for r in rows},
    }
