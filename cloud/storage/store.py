"""`Storage`: the cloud's one storage interface, the same operations over either backend."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from cloud.storage.backend import Backend, Transaction
from cloud.storage.commands import CommandStore
from cloud.storage.configs import ConfigStore
from cloud.storage.devices import DeviceStore
from cloud.storage.diagnostics import DiagnosticsStore
from cloud.storage.faults import FaultStore
from cloud.storage.ingest import IngestStore
from cloud.storage.ota import OtaStore
from cloud.storage.outbox import OutboxStore
from cloud.storage.schema import applied_versions, migrate

# Tables whose row counts `counts()` reports (for /metrics and checks).
COUNTED_TABLES = ("devices", "uploads", "packets", "commands", "config_versions", "firmware",
                  "ota_sessions", "ota_reports", "diagnostics", "fault_events", "outbox")


class Storage(DeviceStore, IngestStore, CommandStore, ConfigStore, OtaStore, DiagnosticsStore, FaultStore,
              OutboxStore):
    """Durable state of the cloud. Every method is one transaction; a write returns once committed.

    Open it with `open_storage`; use it as an async context manager or call `close()`. The
    operations, by part (each part's module says what it guarantees):

    - devices: register_device, touch_device, set_device_state, get_device, list_devices;
      add_operator_token, find_operator_token, list_operator_tokens, revoke_operator_token
    - ingest: ingest, record_rejected_upload, list_uploads, list_packets, telemetry, packet_stats,
      codec_state, nonce_state, list_nonce_states, reset_nonces
    - commands: enqueue_command, lease_command, complete_command, expire_commands, get_command,
      list_commands, command_counts
    - configs: set_config, revise_config, take_config_change, ack_config, current_config, config_history
    - ota: add_firmware, get_firmware, list_firmware; create_rollout, get_rollout, list_rollouts,
      set_rollout_state, rollout_for_device, update_rollout_target; start_ota_session,
      record_ota_chunk, note_firmware_version, finish_ota_session, expire_ota_sessions, get_ota_session,
      active_ota_session, list_ota_sessions, ota_stats; add_ota_report, list_ota_reports
    - diagnostics: add_diagnostic, list_diagnostics, diagnostics_summary, delete_diagnostics
    - faults: add_fault_rule, active_fault_rules, clear_fault_rules, log_fault, fault_events,
      fault_counts
    - outbox: enqueue_messages, claim_outbox, mark_published, release_outbox, pending_outbox,
      list_outbox, purge_outbox
    - this class: migrate, schema_versions, counts, close
    """

    def __init__(self, backend: Backend, wall_clock: Callable[[], float], url: str) -> None:
        super().__init__(backend, wall_clock)
        self.url = url

    @property
    def backend_name(self) -> str:
        return self._backend.dialect.name

    async def migrate(self) -> list[int]:
        """Apply pending schema migrations (done by `open_storage`); the versions applied now."""

        async def work(tx: Transaction) -> list[int]:
            return await migrate(tx, self._clock())

        return await self._backend.write(work)

    async def schema_versions(self) -> list[int]:
        return await self._backend.read(applied_versions)

    async def counts(self) -> dict[str, int]:
        """Rows per table, from one snapshot."""

        async def work(tx: Transaction) -> dict[str, int]:
            counts = {table: int(await tx.fetchval(f"SELECT COUNT(*) FROM {table}")) for table in COUNTED_TABLES}
            counts["samples"] = int(await tx.fetchval("SELECT COALESCE(SUM(sample_count), 0) FROM packets"))
            return counts

        return await self._backend.read(work)

    async def close(self) -> None:
        """Finish the writes already queued, then close the connections."""
        await self._backend.close()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
