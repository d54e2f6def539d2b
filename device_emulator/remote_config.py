"""Remote configuration (firmware-protocol.md §5): `POST /changes` every 5 s and what follows.

Firmware 1.0.4 (quirks on) stores what passes its few checks in NVS and never applies it while
running (the inverted up-to-date flag): the new poll/upload intervals and register selection only take
effect at the next boot, which reads NVS. It sends no acknowledgement.

The spec firmware validates every flagged change (`review_config`), persists the accepted ones in NVS
together with the acknowledgement still to send (one NVS record: a power cut keeps both or neither),
puts them in force after the next upload without a reboot (`apply_pending`, called by the loop), and
acknowledges with `POST /config/ack/<device_id>` `{"config_ack":{accepted, rejected, unchanged}}`
until the cloud takes it. Repeating a configuration is harmless: it is acknowledged as unchanged.

The quirks are separate switches: `config_count_unchecked` selects 1.0.4's checks over the spec
validation (the acknowledgement needs the latter), `config_never_applied_at_runtime` keeps stored
settings pending until a reboot, `config_not_acknowledged` suppresses the acknowledgement.
"""

from __future__ import annotations

from urllib.parse import quote

from device_emulator.cloud_http import exchange
from device_emulator.context import FirmwareContext
from device_emulator.event_log import EventKind
from device_emulator.nvs import (
    CONFIG_PENDING_ACK,
    POLL_FREQ,
    REG_COUNT,
    REGS,
    UPLOAD_FREQ,
    NvsKey,
    NvsStore,
    register_selection,
)
from device_emulator.profiles import Timings
from protocol.config_message import (
    FIRMWARE_REPLY_LIMIT,
    POLL,
    REGISTERS,
    UPLOAD,
    ConfigAck,
    ConfigReply,
    DeviceSettings,
    StoredConfig,
    config_request,
    firmware_apply,
    parse_config_reply,
    review_config,
)
from protocol.errors import DocumentError
from protocol.registers import selection_mask

TAG = "CONFIG"
POINT_PERSISTED = "config.persisted"  # accepted settings (and the ack to send) are in NVS
_US_PER_S = 1_000_000


def _stored(nvs: NvsStore, key: NvsKey) -> int | None:
    """The integer NVS holds for `key`, or None when nothing (of its type) is stored."""
    entry = nvs.entry(key.namespace, key.key)
    return (
        entry.value if entry is not None and entry.type is key.type and isinstance(entry.value, int) else None
    )


def _interval_s(nvs: NvsStore, key: NvsKey, default_s: float) -> int:
    if _stored(nvs, key) is None:
        return round(default_s)
    return key.read_int(nvs) // _US_PER_S  # the key's own minimum and fallback apply


def boot_settings(nvs: NvsStore, timings: Timings) -> DeviceSettings:
    """The settings a boot puts in force: what NVS holds, else the build's defaults."""
    return DeviceSettings(
        poll_interval_s=_interval_s(nvs, POLL_FREQ, timings.poll_s),
        upload_interval_s=_interval_s(nvs, UPLOAD_FREQ, timings.upload_s),
        registers=tuple(register_selection(nvs)),
    )


class RemoteConfig:
    """The configuration component of one running firmware."""

    def __init__(self, ctx: FirmwareContext) -> None:
        self.ctx = ctx
        self.quirks = ctx.profile.quirks
        self.settings = boot_settings(ctx.nvs, ctx.profile.timings)  # in force
        self.pending: DeviceSettings | None = None  # stored in NVS, not in force yet

    async def check(self) -> ConfigAck | None:
        """One configuration check; the acknowledgement it produced, if any."""
        ctx = self.ctx
        await self.deliver_ack()
        reply = await exchange(
            ctx,
            "POST",
            "/changes",
            body=config_request(ctx.device_id, ctx.millis()),
            timeout=ctx.profile.timings.cloud_timeout_s,
            limit=FIRMWARE_REPLY_LIMIT,
        )
        if reply is None:
            ctx.console.log(TAG, "configuration check failed: no reply", "W")
            return None
        try:
            offer = parse_config_reply(reply.body)
        except DocumentError as error:
            ctx.console.log(TAG, f"ignoring configuration reply: {error}", "W")
            return None
        if not offer.changed:
            return None
        if self.quirks.config_count_unchecked:
            self._store_unchecked(offer)
            return None
        return await self._review(offer)

    def _store_unchecked(self, offer: ConfigReply) -> None:
        """Firmware 1.0.4: store whatever passes its checks; no acknowledgement."""
        nvs = self.ctx.nvs
        before = StoredConfig(
            _stored(nvs, POLL_FREQ), _stored(nvs, UPLOAD_FREQ), _stored(nvs, REGS), _stored(nvs, REG_COUNT)
        )
        after = firmware_apply(offer, before)
        if after == before:
            return
        with nvs.transaction() as tx:
            for key, old, new in (
                (POLL_FREQ, before.poll_us, after.poll_us),
                (UPLOAD_FREQ, before.upload_us, after.upload_us),
                (REGS, before.regs_mask, after.regs_mask),
                (REG_COUNT, before.reg_count, after.reg_count),
            ):
                if new is not None and new != old:
                    tx.put(key, new)
        self._persisted("configuration stored in NVS")

    async def _review(self, offer: ConfigReply) -> ConfigAck:
        """Spec: validate, persist the accepted settings with the ack to send, then acknowledge."""
        ctx = self.ctx
        review = review_config(offer, self.pending or self.settings)
        ack, settings = review.ack, review.settings
        with ctx.nvs.transaction() as tx:
            if POLL in ack.accepted:
                tx.put(POLL_FREQ, settings.poll_interval_s * _US_PER_S)
            if UPLOAD in ack.accepted:
                tx.put(UPLOAD_FREQ, settings.upload_interval_s * _US_PER_S)
            if REGISTERS in ack.accepted:
                tx.put(REGS, selection_mask(settings.registers))
                tx.put(REG_COUNT, len(settings.registers))
            if not self.quirks.config_not_acknowledged:
                tx.put(CONFIG_PENDING_ACK, ack.to_json().decode("utf-8"))
        for rejection in ack.rejected:
            ctx.events.record(
                EventKind.CONFIG_REJECTED, f"{rejection.field}: {rejection.reason}", field=rejection.field
            )
            ctx.console.log(TAG, f"rejected {rejection.field}: {rejection.reason}", "W")
        if ack.accepted:
            self._persisted(f"accepted {', '.join(ack.accepted)}")
        await self.deliver_ack()
        return ack

    def _persisted(self, message: str) -> None:
        ctx = self.ctx
        ctx.point(POINT_PERSISTED)
        self.pending = boot_settings(ctx.nvs, ctx.profile.timings)
        ctx.events.record(EventKind.CONFIG_ACCEPTED, message)
        when = "after reboot" if self.quirks.config_never_applied_at_runtime else "after the next upload"
        ctx.console.log(TAG, f"{message}; takes effect {when}")

    async def deliver_ack(self) -> bool:
        """Send the acknowledgement waiting in NVS, if any; True once the cloud took it."""
        ctx = self.ctx
        text = CONFIG_PENDING_ACK.read(ctx.nvs)
        if not isinstance(text, str):
            return False
        reply = await exchange(
            ctx,
            "POST",
            f"/config/ack/{quote(ctx.device_id, safe='')}",
            body=text.encode("utf-8"),
            timeout=ctx.profile.timings.cloud_timeout_s,
        )
        if reply is None or not reply.ok:
            ctx.console.log(TAG, "configuration ack not delivered; will retry", "W")
            return False
        ctx.nvs.erase_key(CONFIG_PENDING_ACK.namespace, CONFIG_PENDING_ACK.key)
        return True

    def apply_pending(self) -> DeviceSettings | None:
        """Called by the loop after each upload: the settings that take effect now, if any.

        Never anything with `config_never_applied_at_runtime` (1.0.4: only a reboot applies them).
        """
        if self.pending is None or self.quirks.config_never_applied_at_runtime:
            return None
        self.settings, self.pending = self.pending, None
        self.ctx.events.record(EventKind.CONFIG_APPLIED, "configuration in force")
        self.ctx.console.log(
            TAG,
            f"applied: poll {self.settings.poll_interval_s} s, upload {self.settings.upload_interval_s} s, "
            f"registers {list(self.settings.registers)}",
        )
        return self.settings
