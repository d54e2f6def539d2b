"""Firmware over the air, the device side (firmware-protocol.md §7.3).

`check()` is one run of the procedure: `GET /ota/check/<id>?version=`, save the manifest in NVS,
prepare the passive slot, `POST /ota/initiate/<id>`, fetch chunks in order and decrypt them as one
AES-256-CBC stream (the IV of chunk n+1 is the last ciphertext block of chunk n) straight into flash,
finalise, verify (SHA-256 of the image read back from flash, RSA signature), switch the boot slot and
ask for a reboot. `on_boot()` runs once after every boot: the spec firmware confirms a new image after
a self-test (esp_ota_mark_app_valid_cancel_rollback) or rolls it back, and reports what happened.

Firmware 1.0.4 (quirks on):
* `ota_restarts_from_chunk_0`: progress is never saved; every attempt erases and starts at chunk 0.
* `ota_verify_after_switch`: the boot slot is switched before verification, so a reset in between
  boots the unverified image; a failed verification marks it invalid and reboots into the old one.
* `ota_manifest_hash_ignored`: only the signature is checked.
* `ota_no_reports`: no `POST /ota/report/<id>`, no `POST /ota/complete/<id>`.
* `ota_no_boot_confirmation`: the slot is switched without rollback states (the Arduino bootloader
  never sees "pending verify"), nothing is confirmed and nothing is ever rolled back.

The spec firmware saves progress after every chunk it verified and wrote (NVS `ota_progress`: chunks,
bytes, the CBC chaining block), resumes from there, checks the manifest hash and the signature
*before* switching, switches with rollback states, reports progress, verification, reboot and boot
confirmation, and completes the cloud's session.

Like the real firmware, the client does not parse the image before switching: the bootloader refuses
an image that does not verify as an app (boot.py) and the previous one keeps running.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from device_emulator.boot import check_slot
from device_emulator.cloud_http import CloudReply, exchange
from device_emulator.context import FirmwareContext
from device_emulator.event_log import EventKind
from device_emulator.nvs import (
    OTA_BYTES_DOWNLOADED,
    OTA_CHUNK_SIZE,
    OTA_CHUNKS,
    OTA_CHUNKS_RECEIVED,
    OTA_ENCRYPTED_SIZE,
    OTA_IV,
    OTA_NEXT_IV,
    OTA_PROGRESS_VERSION,
    OTA_SHA256,
    OTA_SIGNATURE,
    OTA_SIZE,
    OTA_VERSION,
    NvsKey,
    NvsType,
)
from protocol.errors import DocumentError, EcoWattError, FirmwareError
from protocol.firmware_crypto import (
    AES_KEY_SIZE,
    BLOCK_SIZE,
    SignatureScheme,
    load_public_key_pem,
    strip_pkcs7,
    verify_digest,
)
from protocol.ota_messages import (
    FIRMWARE_CHUNK_LIMIT,
    OtaReport,
    ReportPhase,
    UpdateOffer,
    complete_request,
    initiate_request,
    parse_check_reply,
    parse_chunk_reply,
    parse_initiate_reply,
)
from protocol.otadata import OtaState
from protocol.partition_table import Partition

TAG = "OTA"
ESP_IMAGE_MAGIC = 0xE9
PROGRESS_REPORT_STEP = 10  # percent between progress reports

# Tagged points (ctx.point): the harness may cut the power there.
POINT_CHUNK_WRITTEN = "ota.chunk.written"  # a chunk is in flash; its progress is not saved yet
POINT_SWITCHED_UNVERIFIED = "ota.switched.unverified"  # 1.0.4: boot slot switched, nothing verified
POINT_VERIFIED = "ota.verified"  # spec: verified, boot slot not switched yet
POINT_CONFIRMED = "ota.confirmed"  # spec: the new image marked itself valid, not reported yet

PROGRESS_NAMESPACE = OTA_CHUNKS_RECEIVED.namespace
# NVS keys only the spec firmware uses: which release the saved progress belongs to, and the boot
# confirmation.
PROGRESS_SHA256 = NvsKey(
    PROGRESS_NAMESPACE,
    "sha256",
    NvsType.STR,
    None,
    "manifest hash of the release being downloaded",
    spec_only=True,
)
EXPECTED_VERSION = NvsKey(
    "ota", "expect_ver", NvsType.STR, None, "version that should run after the OTA reboot", spec_only=True
)
BOOT_REPORT = NvsKey(
    "ota", "boot_report", NvsType.STR, None, "boot confirmation report not yet delivered", spec_only=True
)

SelfTest = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class FirmwareKeys:
    """What the firmware has compiled in to take an update: the AES-256 key and the signer's key."""

    aes_key: bytes
    public_key: rsa.RSAPublicKey
    scheme: SignatureScheme = SignatureScheme.PKCS1V15

    def __post_init__(self) -> None:
        if len(self.aes_key) != AES_KEY_SIZE:
            raise FirmwareError("AES-256 key must be 32 bytes", len(self.aes_key))

    @classmethod
    def load(cls, directory: str | Path) -> FirmwareKeys:
        """From a keys directory as the reference tool writes it (§7.1)."""
        directory = Path(directory)
        return cls(
            (directory / "aes_firmware_key.bin").read_bytes(),
            load_public_key_pem((directory / "server_public_key.pem").read_bytes()),
        )


@dataclass(frozen=True)
class OtaResult:
    """How one `check()` ended."""

    version: str | None  # the version offered (None: nothing offered, or no answer)
    ok: bool  # verified, switched, reboot requested
    stage: str  # "verified", or where it stopped: no_update, check, prepare, initiate, chunk,
    # magic_byte, write, size, manifest_hash, rsa_signature
    reason: str = ""
    chunk: int | None = None  # the chunk being processed when it stopped
    first_chunk: int = 0  # where this attempt started (> 0: resumed)


class _Stop(Exception):
    """Ends an attempt at `stage`."""

    def __init__(self, stage: str, reason: str, chunk: int | None = None) -> None:
        super().__init__(reason)
        self.stage, self.reason, self.chunk = stage, reason, chunk


@dataclass
class _Progress:
    next_chunk: int
    written: int  # plaintext bytes in flash
    iv: bytes  # CBC chaining block for next_chunk


def _decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


class OtaClient:
    """The OTA component of one running firmware.

    `keys` are the AES key and public key the build has compiled in; without them updates are still
    checked for but never installed. `running_slot` is the slot the bootloader started
    (BootDecision.slot); without it, the slot holding this firmware's image is found in flash.
    `self_test` decides whether a new image confirms itself (default: it does); the harness injects
    a failing one to model a broken build.
    """

    def __init__(
        self,
        ctx: FirmwareContext,
        keys: FirmwareKeys | None = None,
        *,
        running_slot: int | None = None,
        self_test: SelfTest | None = None,
    ) -> None:
        self.ctx = ctx
        self.keys = keys
        self.quirks = ctx.profile.quirks
        self.timings = ctx.profile.timings
        self._running_slot = running_slot
        self._self_test = self_test
        self._id = quote(ctx.device_id, safe="")

    # --- wire ---------------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: bytes | None = None) -> CloudReply | None:
        return await exchange(self.ctx, method, path, body=body, timeout=self.timings.ota_timeout_s)

    async def _report(self, report: OtaReport) -> bool:
        if self.quirks.ota_no_reports:
            return False
        reply = await self._call("POST", f"/ota/report/{self._id}", report.to_json())
        return reply is not None and reply.ok

    async def _complete(self, success: bool) -> None:
        if not self.quirks.ota_no_reports:
            await self._call("POST", f"/ota/complete/{self._id}", complete_request(success))

    # --- slots --------------------------------------------------------------------------------------

    @property
    def running_slot(self) -> int:
        """esp_ota_get_running_partition: the slot whose image is this firmware (the one otadata
        names when both qualify; it is not the one otadata names after a fallback)."""
        if self._running_slot is None:
            flash, ctx = self.ctx.flash, self.ctx
            slots = flash.ota_slots()
            named = flash.ota_state().boot_slot(len(slots))
            mine = [
                slot
                for slot, partition in enumerate(slots)
                if check_slot(flash, slot, partition).identity == (ctx.profile.name, ctx.version)
            ]
            self._running_slot = named if named in mine or not mine else mine[0]
            if self._running_slot is None:
                self._running_slot = 0
        return self._running_slot

    def _passive(self) -> tuple[int, Partition]:
        """esp_ota_get_next_update_partition: the slot after the running one."""
        slots = self.ctx.flash.ota_slots()
        slot = (self.running_slot + 1) % len(slots)
        return slot, slots[slot]

    # --- the procedure ------------------------------------------------------------------------------

    async def check(self) -> OtaResult:
        """One OTA check and, when an update is offered, one attempt to install it."""
        ctx = self.ctx
        await self._deliver_boot_report()
        query = urlencode({"version": ctx.version})
        reply = await self._call("GET", f"/ota/check/{self._id}?{query}")
        if reply is None or reply.status != 200:
            return OtaResult(None, False, "check", "no answer" if reply is None else f"HTTP {reply.status}")
        try:
            offer = parse_check_reply(reply.body)
        except DocumentError as error:
            ctx.console.log(TAG, f"bad check reply: {error}", "W")
            return OtaResult(None, False, "check", str(error))
        if offer is None:
            return OtaResult(None, False, "no_update")
        ctx.console.log(TAG, f"update available: {ctx.version} -> {offer.latest_version}")
        if self.keys is None:
            ctx.console.log(TAG, "no firmware keys in this build: update ignored", "W")
            return OtaResult(offer.latest_version, False, "prepare", "no firmware keys")
        ctx.events.record(EventKind.OTA_STARTED, offer.latest_version, version=offer.latest_version)
        progress, first = _Progress(0, 0, offer.iv), 0
        try:
            self._save_manifest(offer)
            progress = self._prepare(offer)
            first = progress.next_chunk
            return await self._install(offer, progress)
        except _Stop as stop:
            return await self._failed(offer, stop, first, progress.next_chunk)
        except EcoWattError as error:  # e.g. a manifest field NVS cannot hold, a damaged partition table
            return await self._failed(offer, _Stop("prepare", str(error)), first, progress.next_chunk)

    def _save_manifest(self, offer: UpdateOffer) -> None:
        with self.ctx.nvs.transaction() as tx:
            tx.put(OTA_VERSION, offer.latest_version)
            tx.put(OTA_SIZE, offer.original_size & 0xFFFFFFFF)
            tx.put(OTA_ENCRYPTED_SIZE, offer.encrypted_size & 0xFFFFFFFF)
            tx.put(OTA_SHA256, offer.sha256_hash)
            tx.put(OTA_SIGNATURE, base64.b64encode(offer.signature).decode("ascii"))
            tx.put(OTA_IV, base64.b64encode(offer.iv).decode("ascii"))
            tx.put(OTA_CHUNK_SIZE, offer.chunk_size & 0xFFFFFFFF)
            tx.put(OTA_CHUNKS, offer.total_chunks & 0xFFFFFFFF)

    def _saved_progress(self, offer: UpdateOffer) -> _Progress | None:
        """Spec: where a download of this same release stopped, if one did."""
        nvs = self.ctx.nvs
        if (
            OTA_PROGRESS_VERSION.read(nvs) != offer.latest_version
            or PROGRESS_SHA256.read(nvs) != offer.sha256_hash
        ):
            return None
        chunks, written, iv = (
            OTA_CHUNKS_RECEIVED.read(nvs),
            OTA_BYTES_DOWNLOADED.read(nvs),
            OTA_NEXT_IV.read(nvs),
        )
        if not (isinstance(chunks, int) and isinstance(written, int) and isinstance(iv, bytes)):
            return None
        if not 0 < chunks <= offer.total_chunks or written > offer.original_size or len(iv) != BLOCK_SIZE:
            return None
        return _Progress(chunks, written, iv)

    def _prepare(self, offer: UpdateOffer) -> _Progress:
        """Check the size, then resume (spec) or erase the passive slot and start at chunk 0."""
        nvs, flash = self.ctx.nvs, self.ctx.flash
        _, partition = self._passive()
        if offer.encrypted_size > partition.size:
            raise _Stop("prepare", f"image of {offer.encrypted_size} bytes does not fit {partition.label}")
        if not self.quirks.ota_restarts_from_chunk_0:
            saved = self._saved_progress(offer)
            if saved is not None:
                return saved
            nvs.erase_namespace(PROGRESS_NAMESPACE)
        flash.erase_partition(partition, min(offer.original_size, partition.size))
        return _Progress(0, 0, offer.iv)

    async def _install(self, offer: UpdateOffer, progress: _Progress) -> OtaResult:
        ctx = self.ctx
        version = offer.latest_version
        first = progress.next_chunk
        reply = await self._call("POST", f"/ota/initiate/{self._id}", initiate_request(version))
        if reply is None or reply.status not in (200, 201):
            raise _Stop("initiate", "no answer" if reply is None else f"HTTP {reply.status}")
        try:
            parse_initiate_reply(reply.body)
        except DocumentError as error:
            raise _Stop("initiate", str(error)) from None
        status = "resumed" if first else "started"
        ctx.console.log(TAG, f"download {status} at chunk {first}/{offer.total_chunks}")
        await self._report(OtaReport(ReportPhase.PROGRESS, status, version, first, offer.total_chunks))

        slot, partition = self._passive()
        for index in range(first, offer.total_chunks):
            data = await self._chunk(version, index)
            self._write_chunk(offer, partition, progress, index, data)
            ctx.point(POINT_CHUNK_WRITTEN)
            if not self.quirks.ota_restarts_from_chunk_0:
                self._save_progress(offer, progress)
            await self._progressed(offer, index)

        if progress.written != offer.original_size:
            raise _Stop("size", f"{progress.written} bytes written, expected {offer.original_size}")
        rollback = not self.quirks.ota_no_boot_confirmation
        if self.quirks.ota_verify_after_switch:
            ctx.flash.set_boot_slot(slot, rollback=rollback)
            ctx.point(POINT_SWITCHED_UNVERIFIED)
            try:
                self._verify(offer, partition)
            except _Stop:
                # esp_ota_mark_app_invalid_rollback_and_reboot on the image just made bootable.
                ctx.flash.mark_app_invalid()
                ctx.request_reboot("OTA verification failed: rolling back")
                raise
        else:
            self._verify(offer, partition)
            await self._report(OtaReport(ReportPhase.VERIFICATION, "passed", version))
            ctx.point(POINT_VERIFIED)
            ctx.flash.set_boot_slot(slot, rollback=rollback)
        return await self._switched(offer, first)

    async def _chunk(self, version: str, index: int) -> bytes:
        query = urlencode({"version": version, "chunk": index})
        reply = await self._call("GET", f"/ota/chunk/{self._id}?{query}")
        if reply is None or reply.status != 200:
            raise _Stop("chunk", "no answer" if reply is None else f"HTTP {reply.status}", index)
        try:
            return parse_chunk_reply(reply.body)
        except DocumentError as error:
            raise _Stop("chunk", str(error), index) from None

    def _write_chunk(
        self, offer: UpdateOffer, partition: Partition, progress: _Progress, index: int, data: bytes
    ) -> None:
        """Decrypt chunk `index` with the running CBC state and program it right after the last one."""
        assert self.keys is not None
        if not data or len(data) % BLOCK_SIZE or len(data) > FIRMWARE_CHUNK_LIMIT:
            raise _Stop("chunk", f"chunk of {len(data)} bytes is not 16..1040 in whole AES blocks", index)
        plaintext = _decrypt(self.keys.aes_key, progress.iv, data)
        if index == 0 and plaintext[0] != ESP_IMAGE_MAGIC:
            raise _Stop("magic_byte", f"image starts with {plaintext[0]:#04x}, not 0xe9", index)
        if index == offer.total_chunks - 1:
            # The padding is removed when valid and kept otherwise (the size check catches that).
            unpadded = strip_pkcs7(plaintext)
            plaintext = plaintext if unpadded is None else unpadded
        if progress.written + len(plaintext) > offer.original_size:
            raise _Stop("write", "more data than original_size", index)
        self.ctx.flash.write_partition(partition, progress.written, plaintext)
        progress.written += len(plaintext)
        progress.iv = data[-BLOCK_SIZE:]
        progress.next_chunk = index + 1

    def _save_progress(self, offer: UpdateOffer, progress: _Progress) -> None:
        with self.ctx.nvs.transaction() as tx:
            tx.put(OTA_PROGRESS_VERSION, offer.latest_version)
            tx.put(PROGRESS_SHA256, offer.sha256_hash)
            tx.put(OTA_CHUNKS_RECEIVED, progress.next_chunk)
            tx.put(OTA_BYTES_DOWNLOADED, progress.written)
            tx.put(OTA_NEXT_IV, progress.iv)

    async def _progressed(self, offer: UpdateOffer, index: int) -> None:
        """Log and report each time the download crosses another 10 %."""
        total = offer.total_chunks
        percent, before = (index + 1) * 100 // total, index * 100 // total
        if percent // PROGRESS_REPORT_STEP == before // PROGRESS_REPORT_STEP:
            return
        self.ctx.console.log(TAG, f"downloaded {index + 1}/{total} chunks ({percent}%)")
        self.ctx.events.record(EventKind.OTA_PROGRESS, f"{percent}%", chunks=index + 1, total=total)
        await self._report(
            OtaReport(ReportPhase.PROGRESS, "downloading", offer.latest_version, index + 1, total)
        )

    def _verify(self, offer: UpdateOffer, partition: Partition) -> None:
        """SHA-256 of the image read back from flash, the manifest hash (spec), the RSA signature."""
        assert self.keys is not None
        digest = hashlib.sha256(self.ctx.flash.read_partition(partition, 0, offer.original_size)).digest()
        self.ctx.console.log(TAG, f"image SHA-256 {digest.hex()} (manifest {offer.sha256_hash})")
        if not self.quirks.ota_manifest_hash_ignored and digest.hex() != offer.sha256_hash.lower():
            raise _Stop("manifest_hash", "image hash differs from the manifest")
        try:
            verify_digest(self.keys.public_key, digest, offer.signature, self.keys.scheme)
        except FirmwareError as error:
            raise _Stop("rsa_signature", str(error)) from None

    async def _switched(self, offer: UpdateOffer, first: int) -> OtaResult:
        """Verified and bootable: remember what should run next, tell the cloud, reboot."""
        ctx = self.ctx
        version = offer.latest_version
        ctx.events.record(EventKind.OTA_VERIFIED, version, version=version)
        ctx.console.log(TAG, f"firmware {version} verified; rebooting")
        if not self.quirks.ota_no_boot_confirmation:
            with ctx.nvs.transaction() as tx:
                tx.put(EXPECTED_VERSION, version)
                tx.erase_namespace(PROGRESS_NAMESPACE)
        await self._complete(True)
        await self._report(OtaReport(ReportPhase.REBOOT, "rebooting", version))
        await ctx.sleep(self.timings.ota_reboot_delay_s)
        ctx.request_reboot(f"OTA update to {version}")
        return OtaResult(version, True, "verified", first_chunk=first)

    async def _failed(self, offer: UpdateOffer, stop: _Stop, first: int, done: int) -> OtaResult:
        ctx = self.ctx
        version = offer.latest_version
        ctx.console.log(TAG, f"update to {version} failed at {stop.stage}: {stop.reason}", "E")
        ctx.events.record(EventKind.OTA_FAILED, stop.reason, reason=stop.stage, version=version)
        if stop.stage in ("manifest_hash", "rsa_signature"):
            # A bad image: nothing to resume; the next attempt downloads again.
            ctx.nvs.erase_namespace(PROGRESS_NAMESPACE)
            await self._report(OtaReport(ReportPhase.VERIFICATION, "failed", version, reason=stop.stage))
            await self._complete(False)
        else:
            await self._report(
                OtaReport(
                    ReportPhase.PROGRESS, "interrupted", version, done, offer.total_chunks, reason=stop.reason
                )
            )
        return OtaResult(version, False, stop.stage, stop.reason, stop.chunk, first)

    # --- after a boot -------------------------------------------------------------------------------

    async def on_boot(self) -> str | None:
        """Spec: confirm a new image after its self-test, or roll it back; report either.

        Returns "confirmed", "rolled_back", or None when there was nothing to decide.
        """
        if self.quirks.ota_no_boot_confirmation:
            return None
        ctx = self.ctx
        flash = ctx.flash
        await self._deliver_boot_report()
        expected = EXPECTED_VERSION.read(ctx.nvs)
        state = flash.ota_state().state_of(self.running_slot, len(flash.ota_slots()))
        if state == OtaState.PENDING_VERIFY:
            if await self.self_test():
                flash.mark_app_valid()
                ctx.point(POINT_CONFIRMED)
                return await self._boot_outcome(
                    "confirmed", expected if isinstance(expected, str) else ctx.version
                )
            ctx.console.log(TAG, f"self-test of {ctx.version} failed: rolling back", "E")
            ctx.events.record(EventKind.OTA_ROLLED_BACK, f"{ctx.version} failed its self-test")
            flash.mark_app_invalid()
            ctx.request_reboot("self-test failed: rolling back")
            return "rolled_back"
        if not isinstance(expected, str):
            return None
        return await self._boot_outcome("confirmed" if expected == ctx.version else "rolled_back", expected)

    async def self_test(self) -> bool:
        """Whether the new image works well enough to keep (the injected test, else: it booted)."""
        return True if self._self_test is None else await self._self_test()

    async def _boot_outcome(self, status: str, expected: str) -> str:
        ctx = self.ctx
        if status == "confirmed":
            ctx.events.record(EventKind.OTA_CONFIRMED, ctx.version, version=ctx.version)
            ctx.console.log(TAG, f"firmware {ctx.version} confirmed")
        else:
            ctx.events.record(EventKind.OTA_ROLLED_BACK, f"{expected} did not stay; {ctx.version} runs")
            ctx.console.log(TAG, f"update to {expected} rolled back; running {ctx.version}", "W")
        report = OtaReport(ReportPhase.BOOT, status, expected, running_version=ctx.version)
        with ctx.nvs.transaction() as tx:
            tx.erase_key(EXPECTED_VERSION.namespace, EXPECTED_VERSION.key)
            tx.erase_namespace(PROGRESS_NAMESPACE)
            if not self.quirks.ota_no_reports:
                tx.put(BOOT_REPORT, report.to_json().decode("utf-8"))
        await self._deliver_boot_report()
        return status

    async def _deliver_boot_report(self) -> None:
        """Send the boot report waiting in NVS (kept there until the cloud takes it)."""
        text = BOOT_REPORT.read(self.ctx.nvs)
        if not isinstance(text, str) or self.quirks.ota_no_reports:
            return
        reply = await self._call("POST", f"/ota/report/{self._id}", text.encode("utf-8"))
        if reply is not None and reply.ok:
            self.ctx.nvs.erase_key(BOOT_REPORT.namespace, BOOT_REPORT.key)
