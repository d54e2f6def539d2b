"""The event log: ring buffer, counters, subscriptions, and the diagnostics snapshot."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_emulator.event_log import (
    POLLS_OK,
    TIMEOUT,
    EventKind,
    EventLog,
    Level,
    decode_counters,
    encode_counters,
)
from protocol.errors import DocumentError
from protocol.modbus import Verdict

EPOCH = 1_760_000_000.0  # 2025-10-09T08:53:20Z


class Clocks:
    def __init__(self) -> None:
        self.loop = 100.0

    def log(self, **kwargs: object) -> EventLog:
        return EventLog(clock=lambda: self.loop, wall_clock=lambda: EPOCH + self.loop, **kwargs)  # type: ignore[arg-type]


def test_events_carry_loop_time_kind_and_details() -> None:
    clocks = Clocks()
    log = clocks.log()
    clocks.loop = 102.5
    event = log.record(EventKind.UPLOAD_FAILED, "HTTP 500", status=500)
    assert (event.time, event.kind, event.details, event.level) == (
        102.5,
        EventKind.UPLOAD_FAILED,
        {"status": 500},
        Level.ERROR,
    )
    assert log.events == [event]


def test_the_ring_buffer_keeps_the_newest_events() -> None:
    log = Clocks().log(capacity=5)
    for n in range(12):
        log.record(EventKind.QUEUE_OVERFLOW, f"packet {n} dropped")
    assert [e.message for e in log.events] == [f"packet {n} dropped" for n in range(7, 12)]
    assert log.counters["queue_overflows"] == 12
    snapshot = log.snapshot("dev")
    assert (snapshot["events_recorded"], snapshot["events_dropped"]) == (12, 7)


def test_poll_failures_are_counted_by_classification() -> None:
    log = Clocks().log()
    log.record(EventKind.POLL_FAILED, classification=Verdict.PARSE_CRC_ERROR)
    log.record(EventKind.POLL_FAILED, classification=Verdict.PARSE_CRC_ERROR)
    log.record(EventKind.POLL_FAILED, classification=TIMEOUT)
    log.record(EventKind.POLL_FAILED, classification=Verdict.PARSE_TRUNCATED)
    for _ in range(6):
        log.count(POLLS_OK)
    counters = log.counters
    assert counters["poll_failures"] == 4
    assert counters["poll_failures.PARSE_CRC_ERROR"] == 2
    assert counters["poll_failures.TIMEOUT"] == 1
    errors = log.snapshot("dev")["error_counters"]
    assert (errors["read_errors"], errors["crc_errors"], errors["timeouts"], errors["malformed_frames"]) == (
        4,
        2,
        1,
        1,
    )
    assert log.snapshot("dev")["success_rates"]["read_success_pct"] == 60.0


def test_counters_of_boots_uploads_and_ota_outcomes() -> None:
    log = Clocks().log()
    log.record(EventKind.BOOT, reason="power_on")
    log.record(EventKind.BOOT, reason="power_cut")
    log.record(EventKind.UPLOAD_OK)
    log.record(EventKind.UPLOAD_OK)
    log.record(EventKind.UPLOAD_OK)
    log.record(EventKind.UPLOAD_FAILED)
    log.record(EventKind.OTA_FAILED, reason="signature")
    log.record(EventKind.OTA_ROLLED_BACK, recovered=True)
    counters = log.counters
    assert counters["boots"] == 2 and counters["boots.power_cut"] == 1
    assert counters["ota_failures.signature"] == 1 and counters["ota_rollbacks"] == 1
    snapshot = log.snapshot("dev")
    assert snapshot["success_rates"]["upload_success_pct"] == 75.0
    assert snapshot["error_counters"]["upload_failures"] == 1


def test_counters_restored_from_nvs_keep_counting() -> None:
    first = Clocks().log()
    first.record(EventKind.BOOT, reason="power_on")
    first.record(EventKind.UPLOAD_OK)
    saved = encode_counters(first.counters)
    second = Clocks().log(counters=decode_counters(saved))
    second.record(EventKind.BOOT, reason="power_cut")
    assert second.counters["boots"] == 2
    assert second.counters["uploads_ok"] == 1
    assert second.events[0].kind is EventKind.BOOT and len(second.events) == 1  # events are RAM only


@given(st.binary(max_size=200))
def test_decoding_arbitrary_counter_bytes_gives_counters_or_a_typed_error(data: bytes) -> None:
    try:
        counters = decode_counters(data)
    except DocumentError:
        return
    assert all(isinstance(v, int) and v >= 0 for v in counters.values())


@pytest.mark.parametrize("data", [b"[1]", b'{"a":-1}', b'{"a":true}', b'{"a":1.5}', b"[" * 100_000, b"\xff"])
def test_counters_of_the_wrong_shape_are_refused(data: bytes) -> None:
    with pytest.raises(DocumentError):
        decode_counters(data)


def test_snapshot_is_the_diagnostics_document() -> None:
    clocks = Clocks()
    log = clocks.log()
    clocks.loop = 160.0
    log.record(EventKind.POLL_FAILED, "Inverter SIM timeout", classification=TIMEOUT, recovered=True)
    snapshot = json.loads(json.dumps(log.snapshot("ESP32_EcoWatt_Smart")))
    assert snapshot["device_id"] == "ESP32_EcoWatt_Smart"
    assert snapshot["uptime_seconds"] == 60
    assert snapshot["timestamp"] == "2025-10-09T08:56:00.000Z"
    assert set(snapshot["error_counters"]) == {
        "read_errors",
        "write_errors",
        "timeouts",
        "crc_errors",
        "malformed_frames",
        "compression_failures",
        "upload_failures",
        "security_violations",
    }
    assert snapshot["success_rates"]["write_success_pct"] is None  # nothing written yet
    (event,) = snapshot["recent_events"]
    assert event["timestamp"] == "2025-10-09T08:56:00.000Z"
    assert (event["type"], event["event"], event["module"], event["message"], event["recovered"]) == (
        "WARNING",
        "poll_failed",
        "acquisition",
        "Inverter SIM timeout",
        True,
    )
    assert event["details"] == {"classification": "TIMEOUT"}


def test_health_degrades_on_recent_errors_and_recovers() -> None:
    clocks = Clocks()
    log = clocks.log(health_window=300.0)
    log.record(EventKind.QUEUE_OVERFLOW)  # a warning does not degrade
    assert log.snapshot("dev")["system_health"]["status"] == "HEALTHY"
    log.record(EventKind.UPLOAD_FAILED)
    assert log.snapshot("dev")["system_health"]["status"] == "DEGRADED"
    clocks.loop += 301
    assert log.snapshot("dev")["system_health"]["status"] == "HEALTHY"


async def test_subscribers_receive_every_event_in_order() -> None:
    log = Clocks().log()
    subscription = log.subscribe()
    log.record(EventKind.OTA_STARTED, version="1.0.5")
    log.record(EventKind.OTA_PROGRESS, chunk=1)
    first = await asyncio.wait_for(subscription.get(), 1)
    second = await asyncio.wait_for(anext(subscription), 1)
    assert (first.kind, second.kind) == (EventKind.OTA_STARTED, EventKind.OTA_PROGRESS)
    assert subscription.dropped == 0


async def test_a_slow_subscriber_loses_the_oldest_events_and_counts_them() -> None:
    log = Clocks().log()
    slow = log.subscribe(maxsize=3)
    fast = log.subscribe(maxsize=100)
    for n in range(10):
        log.record(EventKind.COMMAND_EXECUTED, str(n))
    assert slow.dropped == 7
    assert [(await slow.get()).message for _ in range(3)] == ["7", "8", "9"]
    assert fast.queue.qsize() == 10 and fast.dropped == 0


async def test_a_closed_subscription_receives_nothing_more() -> None:
    log = Clocks().log()
    with log.subscribe() as subscription:
        log.record(EventKind.CONFIG_ACCEPTED)
    log.record(EventKind.CONFIG_APPLIED)
    assert subscription.queue.qsize() == 1
