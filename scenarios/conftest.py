"""The acceptance suite's own configuration: known defects, provenance, and what scenarios share.

* Known defects (known_defects.yaml): on the profile the file names, the scenarios it lists are marked
  xfail(strict=True) with the quirk and the spec section as the reason, so a defect that stops showing
  fails the run as loudly as a new failure does.
* Every scenario that runs against a DUT records what it ran against (firmware version and image
  hash, profile, board MAC, device id) for the report's provenance.

* Shared by scenarios: `updates` (release the DUT's next firmware through the cloud and follow it),
  `delivery` (where the DUT's samples went, from the conservation checker), `drained` (wait for the
  upload backlog to clear).

The fixtures themselves (hil_stack, hil_dut, hil_cloud, ..., hil_measure for measurements with limits)
come from the harness plugin.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.known_defects import load_known_defects, mark_known_defects
from harness.report import record_provenance

KNOWN_DEFECTS = Path(__file__).with_name("known_defects.yaml")


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, so the file is checked against every scenario
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    known = load_known_defects(KNOWN_DEFECTS)
    mark_known_defects(items, known, config.getoption("--profile"))


def _image_sha256(device: Any) -> str | None:
    """SHA-256 of the app image the emulated board booted (the bytes a manifest's hash covers)."""
    decision = getattr(device, "boot_decision", None)
    if decision is None:
        return None
    return hashlib.sha256(decision.image.raw[: decision.image.length]).hexdigest()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Record the DUT a scenario starts on: the stack is up, the scenario has not changed anything yet."""
    stack = getattr(item, "funcargs", {}).get("hil_stack")
    if stack is not None:
        record_provenance(item, **stack.clock.loop.run_until_complete(_dut_facts(stack.dut)))
    return (yield)


async def _dut_facts(dut: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"device_id": dut.device_id, "firmware_profile": dut.profile}
    device = dut.device
    if device is None:  # a board: asking esptool would reset it mid-run; the runner asks once, up front
        return facts
    info = await dut.info()
    facts.update(firmware_profile=info.get("profile"), firmware_version=info.get("version"),
                 firmware_sha256=_image_sha256(device), board_mac=await dut.read_mac())
    return facts


# --- firmware updates, as the FOTA scenarios drive them ---------------------------------------------------


def next_version(version: str) -> str:
    """The version after `version` ("1.1.0" -> "1.1.1")."""
    *head, last = version.split(".")
    return ".".join([*head, str(int(last) + 1)])


class Updates:
    """A release of the DUT's own firmware build, offered to it through the cloud, and what followed."""

    CHECK_S = 60.0  # the firmware asks for updates every minute

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.cloud = stack.cloud
        self.clock = stack.clock
        self.device_id = stack.dut.device_id

    async def history(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.cloud.ota(self.device_id)
        return result

    async def running(self, timeout: float = 3 * CHECK_S) -> str:
        """The version the device reports at its update checks (waits for the first one)."""

        async def reported() -> str | None:
            version = (await self.history()).get("firmware_version")
            return str(version) if version else None

        result: str = await self.clock.until(reported, timeout=timeout, poll=5.0)
        return result

    async def release(self, version: str | None = None, **publish: Any) -> str:
        """Publish `version` (default: the next one) of the DUT's build and roll it out to the DUT."""
        version = version or next_version(await self.running())
        await self.cloud.publish_firmware(version, profile=self.stack.options.profile, **publish)
        await self.cloud.rollout(version, [self.device_id])
        return version

    async def until_running(self, version: str, timeout: float) -> float:
        """Wait until the device reports running `version`; the device time it took."""
        started = self.clock.now()

        async def reported() -> bool:
            return (await self.history()).get("firmware_version") == version

        await self.clock.until(reported, timeout=timeout, poll=5.0)
        return self.clock.now() - started


@pytest.fixture
def updates(hil_stack: Any) -> Updates:
    return Updates(hil_stack)


# --- where the data went ----------------------------------------------------------------------------------

# Fates of samples that are no loss: waiting on the device, or in the cloud but not decoded exactly (the
# firmware's compression at work, which test_acquisition_buffering judges on its own).
NOT_LOST = ("still on the device", "not uploaded yet", "stored by the cloud as")


@dataclass(frozen=True)
class Delivery:
    """The conservation checker's accounting of one device's samples, read as a scenario needs it."""

    account: Any

    @property
    def in_cloud(self) -> int:
        return int(self.account.matched)

    @property
    def lost(self) -> dict[str, int]:
        """Samples that did not arrive and will not, by reason (empty: nothing lost)."""
        lost = {reason: n for reason, n in self.account.explained.items() if not reason.startswith(NOT_LOST)}
        if self.account.missing:
            lost["missing, with no reason"] = len(self.account.missing)
        if self.account.unexpected:
            lost["altered on the way (stored values never served)"] = len(self.account.unexpected)
        return lost

    @property
    def stored_twice(self) -> int:
        return len(self.account.duplicates)


@pytest.fixture
def delivery() -> Any:
    """`await delivery(stack)`: where the DUT's samples went, once the uploads in flight have landed."""

    async def account(stack: Any) -> Delivery:
        await stack.invariants.settle()
        return Delivery(await stack.invariants.account(stack.dut.device_id))

    return account


@pytest.fixture
def drained() -> Any:
    """`await drained(stack, upload_s)`: wait until the DUT's upload queue is down to at most one packet
    (an upload carries what fits one document, about three packets, while about two arrive per 30 s, so
    a long backlog takes many cycles); returns the device seconds it took. A board's queue is not
    observable: it gets the time a full queue needs."""

    async def wait(stack: Any, upload_s: float, cycles: int = 30) -> float:
        clock = stack.clock
        started = clock.now()
        device = stack.dut.device
        if device is None:
            await clock.advance(seconds=cycles * upload_s)
        else:
            await clock.until(lambda: device.queue is not None and len(device.queue) <= 1,
                              timeout=cycles * upload_s)
        return float(clock.now() - started)

    return wait
