"""Diagnostics over real HTTP: any JSON object up to 64 KiB from a known device, per-device retention,
listing and summary for operators."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from cloud.settings import Limits
from tests.cloud.operator_service import DEVICE, OTHER_DEVICE, Service, running_service

LIMIT = 64 * 1024


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(tmp_path, limits=replace(Limits(), diagnostics_per_device=3)) as running:
        yield running


def document_of_size(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    frame = b'{"pad":""}'
    return frame[:-2] + b"x" * (size - len(frame)) + frame[-2:]


async def post(service: Service, body: bytes, device: str = DEVICE) -> tuple[int, object]:
    return await service.call("POST", f"/diagnostics/{device}", data=body,
                              headers={"Content-Type": "application/json"})


async def test_the_firmware_shaped_document_is_stored_and_listed(service: Service) -> None:
    document = {"device_id": DEVICE, "timestamp": 1234, "uptime_seconds": 60,
                "error_counters": {"read_errors": 1, "timeouts": 0},
                "recent_events": [{"timestamp": 1200, "type": "WARNING", "message": "SIM timeout"}],
                "system_health": {"status": "DEGRADED", "free_heap": 123456}}
    status, body = await post(service, json.dumps(document).encode())
    assert status == 201 and body["success"] is True
    _, listed = await service.call("GET", f"/diagnostics/{DEVICE}", operator=True)
    [entry] = listed["diagnostics"]
    assert entry["document"] == document and entry["received_at"] == service.clock.now


async def test_the_size_limit_is_64_kib(service: Service) -> None:
    assert (await post(service, document_of_size(LIMIT)))[0] == 201
    status, body = await post(service, document_of_size(LIMIT + 1))
    assert status == 413 and body["code"] == "body_too_large"


async def test_only_the_newest_are_kept_per_device(service: Service) -> None:
    for n in range(5):
        await post(service, json.dumps({"n": n}).encode())
        service.clock.advance(1)
    await post(service, b'{"n":0}', OTHER_DEVICE)
    _, listed = await service.call("GET", f"/diagnostics/{DEVICE}?limit=10", operator=True)
    assert [e["document"]["n"] for e in listed["diagnostics"]] == [4, 3, 2]
    _, summary = await service.call("GET", "/diagnostics/summary", operator=True)
    assert summary["summary"]["total_entries"] == 4
    assert summary["summary"]["devices"][DEVICE]["entry_count"] == 3
    _, one = await service.call("GET", f"/diagnostics/summary?device_id={OTHER_DEVICE}", operator=True)
    assert one["summary"]["total_entries"] == 1
    _, every = await service.call("GET", "/diagnostics?limit=1", operator=True)
    assert {d: [e["document"]["n"] for e in entries] for d, entries in every["diagnostics"].items()} == \
        {DEVICE: [4], OTHER_DEVICE: [0]}


@pytest.mark.parametrize("body", [b"[1,2]", b"42", b"not json", b"", b'{"a":1,"a":2}', b"\xfe\xff"])
async def test_anything_but_a_json_object_is_400(service: Service, body: bytes) -> None:
    status, reply = await post(service, body)
    assert status == 400 and reply["success"] is False


async def test_an_unknown_device_cannot_fill_the_storage(service: Service) -> None:
    status, _ = await post(service, b"{}", "made-up")
    assert status == 404
    assert await service.storage.list_diagnostics("made-up") == []


async def test_reading_and_deleting_need_the_operator_token(service: Service) -> None:
    await post(service, b"{}")
    assert (await service.call("GET", f"/diagnostics/{DEVICE}"))[0] == 401
    assert (await service.call("GET", "/diagnostics/summary"))[0] == 401
    assert (await service.call("DELETE", f"/diagnostics/{DEVICE}"))[0] == 401
    _, deleted = await service.call("DELETE", f"/diagnostics/{DEVICE}", operator=True)
    assert deleted["deleted"] == 1
    assert (await service.call("GET", f"/diagnostics/{DEVICE}?limit=0", operator=True))[0] == 400
