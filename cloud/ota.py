"""OTA updates: what a device is offered, its download sessions, its reports, and rollouts.

A device is offered a release only through a rollout that names it, and only when the release is
newer (semantic version order) than the version the device says it runs: never a downgrade, never
the running version. Initiating is always allowed (the new session replaces the old one: firmware
1.0.4 initiates again after any failure and never completes a session); sessions idle for longer than
`idle_timeout` expire. Chunks are served in any order, so a device may resume where it stopped.
Chunk requests are the hot path (a 1 MiB image is a thousand of them): the session is read once per
`SESSION_CACHE_SECONDS` and the chunk counters are written in batches. Reports and completions are stored with their time and move
the device's place in the rollout along: pending, in_progress, installed, succeeded, failed or
rolled_back (a device whose new image rolled back is not offered that release again); once every
device is succeeded or rolled_back, the rollout is completed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from cloud.faults import CORRUPT_CHUNK, WRONG_HASH, FaultAction, FaultService
from cloud.key_registry import KeyRegistry, check_device_id
from cloud.ota_repository import FirmwareRepository, StoredRelease, version_key
from cloud.storage import OtaSession, Rollout, RolloutState, RolloutTarget, SessionStatus, Storage
from protocol.errors import DocumentError
from protocol.ota_messages import (
    OtaReport,
    ReportPhase,
    check_reply,
    chunk_of,
    parse_version,
    session_id,
)

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 300.0  # seconds without a chunk before a session expires
PROGRESS_FLUSH_SECONDS = 1.0  # how long served-chunk counters may wait in memory
# How long a device's session, once read, is trusted for its chunk requests (another cloud process on
# the same database may replace or end it meanwhile; serving a chunk of the same release a moment
# longer is harmless, and this process's own changes update the cache at once).
SESSION_CACHE_SECONDS = 1.0
MAX_ROLLOUT_DEVICES = 10_000
# What `GET /ota/check` assumes when the device names no version and none was ever reported (§7.2).
DEFAULT_VERSION = "1.0.0"

# A rollout target's states.
PENDING, IN_PROGRESS, INSTALLED, SUCCEEDED, FAILED, ROLLED_BACK = (
    "pending", "in_progress", "installed", "succeeded", "failed", "rolled_back")
_FINAL = (SUCCEEDED, ROLLED_BACK)

Notify = Callable[[str, str, dict[str, Any]], object]  # the event bus's publish(kind, device_id, data)


def session_view(session: OtaSession) -> dict[str, Any]:
    """A session as the status routes show it (the reference's names kept where they exist)."""
    view = asdict(session)
    view["status"] = str(session.status)
    view["firmware_version"] = session.version
    view["bytes_transferred"] = session.bytes_served
    done = session.chunks_served * 100 / session.total_chunks if session.total_chunks else 0.0
    view["progress_percent"] = round(min(100.0, done), 1)
    return view


def rollout_view(rollout: Rollout) -> dict[str, Any]:
    view = asdict(rollout)
    view["state"] = str(rollout.state)
    return view


@dataclass
class _Served:
    chunks: int = 0
    size: int = 0
    at: float = 0.0  # wall time of the latest chunk


class OtaService:
    def __init__(self, storage: Storage, repository: FirmwareRepository, *, wall_clock: Callable[[], float],
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, notify: Notify | None = None,
                 faults: FaultService | None = None, keys: KeyRegistry | None = None) -> None:
        self.storage = storage
        self.repository = repository
        self.idle_timeout = idle_timeout
        self._wall_clock = wall_clock
        self._notify = notify
        self._faults = faults
        self._keys = keys
        self._served: dict[str, _Served] = {}
        self._sessions: dict[str, tuple[OtaSession, float]] = {}  # device -> (active session, loop time read)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- collaborators ------------------------------------------------------------------------------

    def _event(self, device_id: str, data: dict[str, Any]) -> None:
        if self._notify is not None:
            self._notify("ota", device_id, data)

    def _fault(self, device_id: str, kind: str, target: str) -> FaultAction | None:
        return None if self._faults is None else self._faults.decide(device_id, kind, target=target)

    # --- offers -------------------------------------------------------------------------------------

    async def offer(self, device_id: str, current_version: str) -> StoredRelease | None:
        """The release the device should install now, if any."""
        current = version_key(current_version)
        found = await self.storage.rollout_for_device(device_id)
        if found is None:
            return None
        rollout, target = found
        wanted = version_key(rollout.version)
        if wanted == current and target.state != SUCCEEDED:
            await self._set_target(rollout.id, device_id, SUCCEEDED, f"reports running {current_version}")
        if wanted <= current or target.state in _FINAL:
            return None
        return await self.repository.release(rollout.version)

    async def check(self, device_id: str, current_version: str | None) -> dict[str, Any]:
        """The `GET /ota/check` reply (nested `update_info`, as the firmware reads it).

        The version the device names is recorded as the one it runs (for a device the service knows:
        this route is unauthenticated, so it never creates devices of its own accord).
        """
        check_device_id(device_id)
        if current_version is None:
            device = await self.storage.get_device(device_id)
            current_version = (device.firmware_version if device else None) or DEFAULT_VERSION
        else:
            parse_version(current_version)
            await self._note_version(device_id, current_version)
        release = await self.offer(device_id, current_version)
        if release is None:
            return check_reply(device_id, current_version, None)
        manifest = release.manifest
        fault = self._fault(device_id, WRONG_HASH, f"GET /ota/check/{device_id}")
        if fault is not None:
            manifest = replace(manifest, sha256_hash=fault.wrong_hash(manifest.sha256_hash))
        return check_reply(device_id, current_version, manifest, f"release {manifest.version}")

    async def _note_version(self, device_id: str, version: str) -> None:
        if await self.storage.note_firmware_version(device_id, version):
            return
        if self._keys is not None and await self._keys.key_for(device_id) is not None:
            await self.storage.register_device(device_id)
            await self.storage.note_firmware_version(device_id, version)

    # --- sessions -----------------------------------------------------------------------------------

    async def initiate(self, device_id: str, version: str) -> OtaSession:
        """Open a session for the release offered to the device (replacing any open one)."""
        check_device_id(device_id)
        parse_version(version)
        found = await self.storage.rollout_for_device(device_id)
        if found is None or found[0].version != version or found[1].state in _FINAL:
            raise DocumentError(f"Firmware version {version} is not offered to this device", version)
        device = await self.storage.get_device(device_id)
        if device is not None and device.firmware_version is not None:
            try:
                running = version_key(device.firmware_version)
            except DocumentError:
                running = ()
            if version_key(version) <= running:
                raise DocumentError(f"the device already runs {device.firmware_version}", version)
        release = await self.repository.release(version)
        await self.flush()
        name = f"{session_id(device_id, version, int(self._wall_clock()))}_{uuid.uuid4().hex[:8]}"
        session = await self.storage.start_ota_session(device_id, version, release.manifest.total_chunks,
                                                       session_id=name)
        self._remember(device_id, session)
        await self.storage.update_rollout_target(found[0].id, device_id, IN_PROGRESS, f"session {name}")
        self._event(device_id, {"event": "initiated", "version": version, "session_id": name})
        return session

    async def active_session(self, device_id: str) -> OtaSession | None:
        """The device's open session, unless it has been idle too long (it expires then)."""
        now = asyncio.get_running_loop().time()
        cached = self._sessions.get(device_id)
        if cached is not None and now - cached[1] < SESSION_CACHE_SECONDS:
            session: OtaSession | None = cached[0]
        else:
            session = await self.storage.active_ota_session(device_id)
            self._remember(device_id, session)
        if session is None:
            return None
        served = self._served.get(session.session_id)
        last = max(session.last_activity, served.at if served else 0.0)
        if self._wall_clock() - last < self.idle_timeout:
            return session
        await self.flush()
        await self.storage.expire_ota_sessions(self.idle_timeout)
        session = await self.storage.active_ota_session(device_id)
        self._remember(device_id, session)
        return session

    def _remember(self, device_id: str, session: OtaSession | None) -> None:
        if session is None:
            self._sessions.pop(device_id, None)
        else:
            self._sessions[device_id] = (session, asyncio.get_running_loop().time())

    async def chunk(self, device_id: str, version: str, index: int) -> bytes:
        """Chunk `index` of the session's release (any order: a device may resume)."""
        session = await self.active_session(device_id)
        if session is None:
            raise DocumentError("No active OTA session")
        if session.version != version:
            raise DocumentError("Firmware version mismatch", version)
        release = await self.repository.release(version)
        data = chunk_of(release.encrypted, index, release.manifest.chunk_size)
        fault = self._fault(device_id, CORRUPT_CHUNK, f"GET /ota/chunk/{device_id} chunk {index}")
        if fault is not None:
            data = fault.corrupt(data)  # same length: only decryption or verification notices
        self._count(session.session_id, len(data))
        return data

    def _count(self, session: str, size: int) -> None:
        served = self._served.setdefault(session, _Served())
        served.chunks += 1
        served.size += size
        served.at = self._wall_clock()
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(PROGRESS_FLUSH_SECONDS, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Write the chunk counters still held in memory."""
        pending, self._served = self._served, {}
        for name, served in pending.items():
            await self.storage.record_ota_chunk(name, served.size, chunks=served.chunks, at=served.at)

    async def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()

    async def _target(self, device_id: str, version: str) -> tuple[Rollout, RolloutTarget] | None:
        found = await self.storage.rollout_for_device(device_id)
        return found if found is not None and found[0].version == version else None

    async def _move_target(self, device_id: str, version: str, state: str, detail: str) -> None:
        found = await self._target(device_id, version)
        if found is not None and found[1].state not in _FINAL:
            await self._set_target(found[0].id, device_id, state, detail)

    async def _set_target(self, rollout_id: int, device_id: str, state: str, detail: str) -> None:
        """Move a device along its rollout; the rollout is completed once every device is done."""
        await self.storage.update_rollout_target(rollout_id, device_id, state, detail)
        if state in _FINAL:
            rollout = await self.storage.get_rollout(rollout_id)
            if rollout is not None and all(t.state in _FINAL for t in rollout.targets):
                await self.storage.set_rollout_state(rollout_id, RolloutState.COMPLETED)
                self._event(device_id, {"event": "rollout_completed", "rollout": rollout.name})

    async def complete(self, device_id: str, success: bool) -> OtaSession:
        """The device says its download ended (and verified, when `success`)."""
        check_device_id(device_id)
        session = await self.active_session(device_id)
        if session is None:
            raise DocumentError("No active OTA session")
        await self.flush()
        finished = await self.storage.finish_ota_session(
            session.session_id, SessionStatus.COMPLETED if success else SessionStatus.FAILED)
        self._remember(device_id, None)
        if finished is None:  # finished by a concurrent request
            raise DocumentError("No active OTA session")
        status = "success" if success else "failure"
        await self.storage.add_ota_report(device_id, "complete", session_id=session.session_id, status=status,
                                          detail={"success": success, "version": session.version})
        await self._move_target(device_id, session.version, INSTALLED if success else FAILED, f"complete: {status}")
        self._event(device_id, {"event": "completed", "version": session.version, "success": success})
        return finished

    async def cancel(self, device_id: str) -> OtaSession:
        session = await self.active_session(device_id)
        if session is None:
            raise DocumentError("No active OTA session")
        await self.flush()
        cancelled = await self.storage.finish_ota_session(session.session_id, SessionStatus.CANCELLED)
        self._remember(device_id, None)
        if cancelled is None:
            raise DocumentError("No active OTA session")
        self._event(device_id, {"event": "cancelled", "version": session.version})
        return cancelled

    async def report(self, device_id: str, report: OtaReport) -> dict[str, Any]:
        """Store a device's report and move its rollout target along."""
        check_device_id(device_id)
        session = await self.active_session(device_id)
        if session is None:
            recent = await self.storage.list_ota_sessions(device_id, limit=1)
            session = recent[0] if recent else None
        stored = await self.storage.add_ota_report(
            device_id, report.phase, session_id=session.session_id if session else None, status=report.status,
            detail=report.to_dict())
        phase, status = ReportPhase(report.phase), report.status
        if phase is ReportPhase.BOOT and report.running_version is not None:
            parse_version(report.running_version)
            await self._note_version(device_id, report.running_version)
        state = {
            (ReportPhase.PROGRESS, "interrupted"): IN_PROGRESS,
            (ReportPhase.VERIFICATION, "failed"): FAILED,
            (ReportPhase.BOOT, "confirmed"): SUCCEEDED,
            (ReportPhase.BOOT, "rolled_back"): ROLLED_BACK,
        }.get((phase, status), IN_PROGRESS if phase is ReportPhase.PROGRESS else None)
        if phase is ReportPhase.REBOOT:
            state = INSTALLED
        if state is not None:
            detail = f"{phase}: {status}" + (f" ({report.reason})" if report.reason else "")
            await self._move_target(device_id, report.version, state, detail)
        self._event(device_id, {"event": "report", **report.to_dict()})
        return {"id": stored.id, "kind": stored.kind, "status": stored.status, "reported_at": stored.reported_at,
                "session_id": stored.session_id}

    # --- what operators read ------------------------------------------------------------------------

    async def status(self, device_id: str) -> dict[str, Any]:
        await self.flush()
        self._sessions.pop(device_id, None)  # the counters just written, not the cached copy
        session = await self.active_session(device_id)
        return {"error": "No active OTA session"} if session is None else session_view(session)

    async def sessions(self, device_id: str | None = None) -> list[dict[str, Any]]:
        await self.flush()
        return [session_view(s) for s in await self.storage.list_ota_sessions(device_id)]

    async def stats(self) -> dict[str, Any]:
        """The reference's counters, plus sessions per status."""
        await self.flush()
        counts = await self.storage.ota_stats()
        sessions = {str(s): counts[str(s)] for s in SessionStatus}
        ended = sessions["completed"] + sessions["failed"]
        return {
            "total_updates_initiated": sum(sessions.values()),
            "successful_updates": sessions["completed"],
            "failed_updates": sessions["failed"],
            "active_sessions": sessions["active"],
            "total_bytes_transferred": counts["bytes_served"],
            "success_rate": round(sessions["completed"] * 100 / ended, 1) if ended else 0.0,
            "sessions": sessions,
        }

    async def history(self, device_id: str) -> dict[str, Any]:
        """Everything OTA about one device: reported version, rollout place, sessions, reports."""
        check_device_id(device_id)
        device = await self.storage.get_device(device_id)
        rollouts = [{**asdict(target), "version": rollout.version, "name": rollout.name,
                     "rollout_state": str(rollout.state)}
                    for rollout, target in await self.storage.device_rollouts(device_id)]
        reports = await self.storage.list_ota_reports(device_id, limit=1000)
        return {
            "device_id": device_id,
            "firmware_version": device.firmware_version if device else None,
            "rollout": rollouts[0] if rollouts else None,  # the newest one naming the device
            "rollouts": rollouts,
            "sessions": await self.sessions(device_id),
            "reports": [asdict(r) for r in reports],
        }

    # --- rollouts -----------------------------------------------------------------------------------

    async def create_rollout(self, version: str, devices: Sequence[str], name: str | None = None) -> Rollout:
        parse_version(version)
        if await self.storage.get_firmware(version) is None:
            raise DocumentError(f"Firmware version {version} not found", version)
        if not devices or len(devices) > MAX_ROLLOUT_DEVICES:
            raise DocumentError(f"a rollout names 1..{MAX_ROLLOUT_DEVICES} devices", len(devices))
        for device_id in devices:
            check_device_id(device_id)
        if name is None:
            name = f"{version}-{uuid.uuid4().hex[:8]}"
        elif not name or len(name) > 100 or not name.isprintable():
            raise DocumentError("a rollout name is 1..100 printable characters", name)
        if any(r.name == name for r in await self.storage.list_rollouts()):
            raise DocumentError("a rollout of that name exists", name)
        rollout = await self.storage.create_rollout(name, version, devices)
        for target in rollout.targets:
            self._event(target.device_id, {"event": "rollout", "version": version, "rollout": name})
        return rollout

    async def set_rollout_state(self, rollout_id: int, state: str) -> Rollout:
        try:
            wanted = RolloutState(state)
        except ValueError:
            raise DocumentError(f"state must be one of {', '.join(RolloutState)}", state) from None
        changed = await self.storage.set_rollout_state(rollout_id, wanted)
        if changed is None:
            raise DocumentError("no such rollout", rollout_id)
        rollout = await self.storage.get_rollout(rollout_id)
        assert rollout is not None
        return rollout
