"""Firmware profiles: which build the emulator models.

`reference-1.0.4` reproduces firmware 1.0.4 with every externally observable defect of
firmware-protocol.md §11.2, each behind a named switch in `Quirks`; `spec` is the same firmware with
every switch off and the course requirements on (runtime configuration with acknowledgement, OTA resume
and reports, boot confirmation, diagnostics, power management, a 15-minute upload).

Defects that live in a wire format the cloud must decode anyway (the 0xD0 16-bit mask, headerless
encodings, the temporal encoder's history overflow) are not switched: both profiles emit the same
formats; `spec` only avoids choosing a packet the receiver cannot decode exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from device_emulator.power import ALWAYS_ON, POWER_MANAGED, PowerPolicy

REFERENCE = "reference-1.0.4"
SPEC = "spec"


@dataclass(frozen=True)
class Quirks:
    """One switch per externally observable defect of firmware 1.0.4 (True = the defect is present)."""

    # --- protocol adapter ---
    response_slave_unchecked: bool = True
    """§1.6, §11.2.11: a valid read response from another slave id is accepted as the inverter's."""
    exception_before_crc: bool = True
    """§1.6, §11.2.11: a frame whose second byte has bit 7 set counts as an exception before its CRC is checked."""
    write_echo_case_sensitive: bool = True
    """§1.1, §1.6, §11.2.11: a write succeeds only if the echo text equals the request text exactly (lowercase fails)."""
    single_register_failure_marker: bool = True
    """§1.6, §11.2.10: with one register selected, a failed read stores the failure marker 0xFFFF as a sample."""

    # --- acquisition and compression ---
    lossy_packets_chosen: bool = True
    """§3.1, §3.2, §3.6, §11.2.3: the smart selection may choose a lossy (0x50, wide 0xD0 delta) or
    undecodable (0xD0 with zero deltas past position 15) packet; fixed: the shortest exact candidate."""
    method_label_from_first_byte: bool = True
    """§3.8, §11.2.7: `method` is derived from the packet's first byte, so headerless data can be mislabelled."""
    base64_unpadded: bool = True
    """§3.8, §11.2.6: `compressed_binary` never carries `=` padding (fills with `A`)."""
    original_size_2n: bool = True
    """§4.2, §11.2.5: `original_size_bytes` and the session summary use 2·n instead of 14·n."""
    lossless_always_true: bool = True
    """§4.2, §11.2.5: `lossless_verified` is true even for lossy packets."""

    # --- upload ---
    document_truncated_2048: bool = True
    """§4.2, §11.2.8: the inner document is cut at 2048 bytes, so more than ~4 queued packets are sent as
    invalid JSON forever; fixed: the tick sends the queue as several documents that fit, one after another."""
    only_200_is_success: bool = True
    """§2.4, §11.2.8: only HTTP 200 counts as a successful upload (201/204 re-queue the packets)."""

    # --- remote configuration (remote_config.py) ---
    config_never_applied_at_runtime: bool = True
    """§5.3, §11.2.9: a configuration is stored in NVS but only takes effect after a reboot (inverted flag)."""
    config_not_acknowledged: bool = True
    """§5.3, §11.2.9: no `config_ack` is sent (`POST /config/ack/<id>`)."""
    config_count_unchecked: bool = True
    """§2.2, §5.3, §11.2.9: `regsCount` is not checked against the bits of `regs` (layout padded with -1)."""

    # --- commands (command_executor.py) ---
    command_non_integer_as_zero: bool = True
    """§6.1, §11.2.12: a non-integer parameter (50.5, "50") is read as 0 (export power set to 0 %)."""
    write_register_unimplemented: bool = True
    """§6.1, §11.2.12: the `write_register` command only logs and always reports failure."""

    # --- OTA (ota_client.py) ---
    ota_restarts_from_chunk_0: bool = True
    """§7.3 step 4-5, §11.2.13: progress is never saved, an interrupted download restarts from chunk 0."""
    ota_verify_after_switch: bool = True
    """§7.3 steps 6-8, §11.2.13: the boot partition is switched before the image is verified."""
    ota_manifest_hash_ignored: bool = True
    """§7.3 step 7, §11.2.13: the manifest's sha256_hash is only printed; a valid signature suffices."""
    ota_no_reports: bool = True
    """§7.3 step 10, §11.2.13: no progress/verification/reboot/boot reports and no `POST /ota/complete`."""
    ota_no_boot_confirmation: bool = True
    """§7.3 step 9, §11.2.13: the new image is never self-tested and marked valid, so it is never rolled back."""

    # --- harness self-test: not a defect of firmware 1.0.4, off in every profile ---
    drop_every_third_upload: bool = False
    """harness self-test, no firmware section: every third upload is reported sent but never reaches the cloud, so the conservation checker has something to catch."""

    @classmethod
    def none(cls) -> Quirks:
        """Every defect fixed (and no harness self-test breakage)."""
        return cls(**{f.name: False for f in dataclasses.fields(cls)})

    def enabled(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


# Switches that break the emulator on purpose so the harness can show its checkers catch it; they model no
# firmware and are off in every profile.
SELF_TEST_QUIRKS: tuple[str, ...] = ("drop_every_third_upload",)


@dataclass(frozen=True)
class Timings:
    """Periods and timeouts in device seconds."""

    poll_s: float = 2.0  # default when NVS freq/poll_freq is absent (§2.1)
    upload_s: float = 15.0  # default when NVS freq/upload_freq is absent (§2.1)
    config_check_s: float = 5.0  # POST /changes (§2.1)
    command_every: int = 2  # a command poll on every 2nd config check (§2.1)
    ota_check_s: float = 60.0  # GET /ota/check (§2.1)
    diagnostics_s: float = 60.0  # spec only: POST /diagnostics/<id> (§8.1)
    inverter_timeout_s: float = 5.0  # one HTTP attempt to the inverter (§1.6)
    inverter_attempts: int = 3
    inverter_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0)
    inverter_parse_retries: int = 3  # further full sends after an invalid response (§1.6)
    cloud_timeout_s: float = 5.0  # upload, config, commands (§4.1)
    ota_timeout_s: float = 30.0  # every OTA request (§7.3)
    ota_reboot_delay_s: float = 2.0  # after a verified download (§7.3 step 8)


@dataclass(frozen=True)
class Profile:
    name: str
    quirks: Quirks
    timings: Timings = field(default_factory=Timings)
    posts_diagnostics: bool = False  # course requirement (§8.1); firmware 1.0.4 never posts
    power_policy: PowerPolicy = ALWAYS_ON  # spec: DVFS and light sleep between timers

    def with_timings(self, **overrides: Any) -> Profile:
        return dataclasses.replace(self, timings=dataclasses.replace(self.timings, **overrides))


PROFILES: dict[str, Profile] = {
    REFERENCE: Profile(REFERENCE, Quirks()),  # drop_every_third_upload defaults to off
    SPEC: Profile(
        SPEC,
        Quirks.none(),
        Timings(upload_s=900.0),  # the course's 15-minute upload
        posts_diagnostics=True,
        power_policy=POWER_MANAGED,
    ),
}


def profile(name: str) -> Profile:
    """The profile called `name`; KeyError names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown firmware profile {name!r} (known: {', '.join(PROFILES)})") from None


def quirk_table() -> str:
    """The quirk switches as a markdown table (docs/quirks.md, `ecowatt device quirks`)."""
    reference, spec = PROFILES[REFERENCE].quirks, PROFILES[SPEC].quirks
    lines = [
        "| quirk | what firmware 1.0.4 does | spec section | reference-1.0.4 | spec |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(Quirks):
        doc = _field_docs().get(f.name, "")
        sections, _, what = doc.partition(": ")
        on = {True: "on", False: "off"}
        lines.append(
            f"| `{f.name}` | {what} | {sections} | {on[getattr(reference, f.name)]} | {on[getattr(spec, f.name)]} |"
        )
    return "\n".join(lines) + "\n"


def quirks_document() -> str:
    """docs/quirks.md: the table with its heading."""
    return (
        "# Firmware profile quirks\n\n"
        "Generated from `device_emulator/profiles.py` (`ecowatt device quirks`); do not edit by hand.\n"
        "Each switch reproduces one externally observable defect of firmware 1.0.4 "
        "(firmware-protocol.md §11.2);\nthe `spec` profile turns them all off.\n\n" + quirk_table()
    )


def _field_docs() -> dict[str, str]:
    """Attribute docstrings of Quirks (the string literal after each field), read from the source."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(Quirks)))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs
