"""Profiles (quirk switches, timings, the generated quirk table), device configuration, the packet
queue and the console."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from device_emulator.config import FLEET_KEY, DeviceConfig, Transport
from device_emulator.console import Console
from device_emulator.packet_queue import PacketQueue
from device_emulator.power import ALWAYS_ON, POWER_MANAGED
from device_emulator.profiles import (
    PROFILES,
    REFERENCE,
    SELF_TEST_QUIRKS,
    SPEC,
    Quirks,
    _field_docs,
    quirk_table,
    quirks_document,
)
from protocol.upload_document import firmware_packet

DOCS = Path(__file__).resolve().parents[2] / "docs" / "quirks.md"


# Every switch but the harness's self-test ones reproduces a defect of firmware 1.0.4.
FIRMWARE_QUIRKS = [f.name for f in dataclasses.fields(Quirks) if f.name not in SELF_TEST_QUIRKS]


def test_every_quirk_is_documented_with_its_spec_section() -> None:
    docs = _field_docs()
    for name in FIRMWARE_QUIRKS:
        assert re.search(r"§\d+(\.\d+)*", docs[name]), name


def test_reference_has_every_quirk_and_spec_none() -> None:
    assert PROFILES[REFERENCE].quirks.enabled() == FIRMWARE_QUIRKS
    assert PROFILES[SPEC].quirks.enabled() == []


def test_profiles_timings_and_power() -> None:
    reference, spec = PROFILES[REFERENCE], PROFILES[SPEC]
    t = reference.timings
    assert (t.poll_s, t.upload_s, t.config_check_s, t.command_every, t.ota_check_s) == (2, 15, 5, 2, 60)
    assert (t.inverter_timeout_s, t.inverter_attempts, t.inverter_backoff_s, t.inverter_parse_retries) == (
        5,
        3,
        (0.5, 1.0, 2.0),
        3,
    )
    assert spec.timings.upload_s == 900  # the course's 15 minutes
    assert (reference.power_policy, spec.power_policy) == (ALWAYS_ON, POWER_MANAGED)
    assert (reference.posts_diagnostics, spec.posts_diagnostics) == (False, True)


def test_quirk_table_lists_every_switch_and_docs_are_current() -> None:
    table = quirk_table()
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == len(dataclasses.fields(Quirks))
    firmware = [row for row in rows if not any(f"`{name}`" in row for name in SELF_TEST_QUIRKS)]
    assert len(firmware) == len(FIRMWARE_QUIRKS) and all(row.endswith("| on | off |") for row in firmware)
    assert DOCS.read_text() == quirks_document(), "regenerate: ecowatt device quirks > docs/quirks.md"


def test_transport_parsing() -> None:
    assert Transport.parse("http") == Transport("http")
    assert Transport.parse("rtu:/dev/ttyUSB0") == Transport("rtu", "/dev/ttyUSB0")
    assert str(Transport.parse("rtu:/dev/ttyUSB0")) == "rtu:/dev/ttyUSB0"
    for bad in ("rtu", "rtu:", "serial", "tcp"):
        with pytest.raises(ValueError):
            Transport.parse(bad)


def test_device_config_defaults_and_validation(tmp_path) -> None:
    config = DeviceConfig("http://127.0.0.1:5001", "http://127.0.0.1:8080", tmp_path, transport="modbus-tcp")
    assert config.transport == Transport("modbus-tcp")
    assert config.device_id == "ESP32_EcoWatt_Smart"
    assert (
        config.key
        == FLEET_KEY
        == bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c762e7160f38b4da56a784d9045190cfe")
    )
    assert config.factory_version == "1.0.4"
    fast = DeviceConfig("http://c:1", "http://i:2", tmp_path, profile=SPEC, timings={"poll_s": 0.5})
    assert fast.profile_for(SPEC).timings.poll_s == 0.5 and fast.factory_version == "1.1.0"
    with pytest.raises(ValueError):
        DeviceConfig("http://c:1", "http://i:2", tmp_path, key=b"short")
    with pytest.raises(ValueError):
        DeviceConfig("http://c:1", "http://i:2", tmp_path, timings={"poll_interval": 1})
    with pytest.raises(ValueError):
        DeviceConfig("not a url", "http://i:2", tmp_path)
    with pytest.raises(ValueError):
        DeviceConfig("http://c:1", "http://i:2", tmp_path, profile="2.0")


def _packet(stamp: int):
    return firmware_packet("AAAA", method="BATCH_BITPACK", register_layout=(0,), compressed_size=3,
                           timestamp=stamp, compression_time_us=1)  # fmt: skip


def test_queue_holds_twenty_and_drops_the_new_packet() -> None:
    queue = PacketQueue()
    assert all(queue.put(_packet(i)) for i in range(20))
    assert queue.put(_packet(20)) is False
    assert queue.dropped == 1
    assert [p.metadata.timestamp for p in queue.snapshot()] == list(range(20))


def test_put_back_restores_the_order_in_front() -> None:
    queue = PacketQueue()
    for i in range(5):
        queue.put(_packet(i))
    drained = queue.drain(3)
    assert [p.metadata.timestamp for p in drained] == [0, 1, 2]
    queue.put(_packet(5))
    queue.put_back(drained)
    assert [p.metadata.timestamp for p in queue.snapshot()] == [0, 1, 2, 3, 4, 5]


def test_console_lines_ring_and_subscribers() -> None:
    millis = iter(range(0, 10_000, 250))
    console = Console(lambda: next(millis), capacity=3)
    seen: list[str] = []
    unsubscribe = console.subscribe(seen.append)
    console.log("main", "hello")
    console.log("adapter", "attempt 1 failed", "W")
    unsubscribe()
    console.log("main", "x")
    console.log("main", "y")
    assert seen == ["[     0][I][main] hello", "[   250][W][adapter] attempt 1 failed"]
    assert console.tail() == [
        "[   250][W][adapter] attempt 1 failed",
        "[   500][I][main] x",
        "[   750][I][main] y",
    ]
    with pytest.raises(ValueError):
        console.log("main", "?", "X")


def test_console_sends_printed_lines_to_its_sink_and_only_records_what_is_already_on_the_wire() -> None:
    console = Console(lambda: 42)
    wire: list[str] = []
    console.sink = wire.append
    console.record("rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)")  # the ROM printed it
    console.idf("boot", "Loaded app from partition at offset 0x10000")
    console.log("main", "boot")
    assert wire == [
        "I (42) boot: Loaded app from partition at offset 0x10000\r\n",
        "[    42][I][main] boot\r\n",
    ]
    assert console.tail(3)[0].startswith("rst:0x1") and len(console.lines) == 3
