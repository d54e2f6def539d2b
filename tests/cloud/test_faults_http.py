"""Fault injection over real HTTP: each kind really happens to the answer, is logged with what it hit,
respects device, probability, duration and paths, and never touches /fault/* itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from protocol.command_message import CommandResult, parse_poll_reply, poll_request
from protocol.config_message import config_request
from tests.cloud.firmware_uploads import FirmwareDevice
from tests.cloud.operator_service import DEVICE, OTHER_DEVICE, Service, running_service


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(tmp_path) as running:
        yield running


async def enable(service: Service, fault_type: str, **fields: object) -> dict:
    status, body = await service.call("POST", "/fault/enable", operator=True, json={"fault_type": fault_type, **fields})
    assert status == 200, body
    return dict(body["rule"])


async def changes(service: Service, device: str = DEVICE, timeout: float = 10.0) -> tuple[int, object]:
    return await service.call("POST", "/changes", data=config_request(device, 1),
                              timeout=aiohttp.ClientTimeout(total=timeout))


async def logged(service: Service) -> list[dict]:
    _, body = await service.call("GET", "/fault/events", operator=True)
    return list(body["events"])


@pytest.mark.parametrize("status", [500, 503])
async def test_http_errors_are_answered_and_logged(service: Service, status: int) -> None:
    await enable(service, f"http_{status}")
    async with service.http.post(service.url + "/changes", data=config_request(DEVICE, 1)) as response:
        assert response.status == status
        assert (await response.json())["code"] == "injected_fault"
        if status == 503:
            assert response.headers["Retry-After"] == "5"
    [event] = await logged(service)
    assert (event["fault_type"], event["target"], event["device_id"]) == (f"http_{status}", "POST /changes", DEVICE)
    await service.call("POST", "/fault/disable", operator=True)
    assert (await changes(service))[0] == 200


async def test_a_dropped_connection_gets_no_answer(service: Service) -> None:
    await enable(service, "drop")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await changes(service)
    assert [e["fault_type"] for e in await logged(service)] == ["drop"]


async def test_a_truncated_body_is_shorter_than_its_content_length(service: Service) -> None:
    await enable(service, "truncate", parameters={"keep_bytes": 10})
    with pytest.raises(aiohttp.ClientPayloadError):
        await changes(service)
    # what a device reading Content-Length bytes off the socket sees
    reader, writer = await asyncio.open_connection(service.server.host, service.server.port)
    body = config_request(DEVICE, 1)
    writer.write(b"POST /changes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    raw = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    assert head.startswith(b"HTTP/1.1 200") and len(rest) == 10 < length
    [second, first] = await logged(service)
    assert first["detail"]["sent_bytes"] == 10 and first["detail"]["body_bytes"] == length


async def test_a_delayed_answer_misses_a_short_client_timeout_but_arrives(service: Service) -> None:
    await enable(service, "delay", parameters={"seconds": 1.0})
    with pytest.raises(TimeoutError):
        await changes(service, timeout=0.2)
    assert (await changes(service, timeout=10))[0] == 200  # late, but answered
    assert [e["detail"] for e in await logged(service)] == [{"seconds": 1.0}, {"seconds": 1.0}]


async def test_after_loses_the_answer_but_keeps_the_effect(service: Service) -> None:
    """`after`: the request is handled (and stored) and only the acknowledgement is lost."""
    _, queued = await service.call("POST", f"/commands/{DEVICE}", operator=True, json={"command": "get_power_stats"})
    async with service.http.post(service.url + "/command/poll", data=poll_request(DEVICE)) as response:
        command = parse_poll_reply(await response.read())
    await enable(service, "http_500", parameters={"after": True, "paths": ["/command/result"]})
    status, _ = await service.call("POST", "/command/result", data=CommandResult.of(command, True).to_json())
    assert status == 500
    assert (await service.storage.get_command(queued["command_id"])).status == "completed"
    [event] = await logged(service)
    assert event["detail"] == {"handled_status": 200}


async def test_a_per_device_fault_hits_only_that_device(service: Service) -> None:
    await enable(service, "http_503", device_id=OTHER_DEVICE)
    assert (await changes(service, DEVICE))[0] == 200
    assert (await changes(service, OTHER_DEVICE))[0] == 503
    assert (await service.call("GET", f"/commands/{DEVICE}/poll"))[0] == 200
    assert (await service.call("GET", f"/commands/{OTHER_DEVICE}/poll"))[0] == 503
    assert {e["device_id"] for e in await logged(service)} == {OTHER_DEVICE}


async def test_probability_and_duration(service: Service) -> None:
    await enable(service, "http_500", probability=0.5, duration_seconds=30)
    statuses = [(await changes(service))[0] for _ in range(40)]
    assert set(statuses) == {200, 500}
    assert len(await logged(service)) == statuses.count(500)
    service.clock.advance(30)  # the rule ran out
    service.faults.refresh_seconds = 0
    assert {(await changes(service))[0] for _ in range(10)} == {200}


async def test_paths_limit_what_a_rule_hits_and_fault_routes_are_exempt(service: Service) -> None:
    await enable(service, "http_503", parameters={"paths": ["/command/"]})
    assert (await changes(service))[0] == 200
    assert (await service.call("POST", "/command/poll", data=poll_request(DEVICE)))[0] == 503
    assert (await service.call("GET", "/fault/status", operator=True))[0] == 200
    status, body = await service.call("POST", "/fault/enable", operator=True,
                                      json={"fault_type": "drop", "parameters": {"paths": ["/fault/disable"]}})
    assert status == 400 and "cannot be faulted" in body["error"]


async def test_status_shows_rules_and_counts_and_clear_ends_them(service: Service) -> None:
    await enable(service, "http_503", device_id=DEVICE, duration_seconds=60, probability=1)
    await changes(service)
    _, body = await service.call("GET", "/fault/status", operator=True)
    status = body["status"]
    assert (status["enabled"], status["fault_type"], status["faults_injected"], status["detailed_stats"]) == \
        (True, "http_503", 1, {"http_503": 1})
    assert status["time_remaining"] == 60 and status["recent_faults"][0]["target"] == "POST /changes"
    _, cleared = await service.call("POST", "/fault/disable", operator=True, json={"device_id": DEVICE})
    assert cleared["cleared"] == 1
    _, body = await service.call("GET", "/fault/status", operator=True)
    assert body["status"]["enabled"] is False and body["status"]["rules"] == []


async def test_available_lists_every_kind(service: Service) -> None:
    _, body = await service.call("GET", "/fault/available", operator=True)
    assert {f["fault_type"] for f in body["faults"]} == {"delay", "http_500", "http_503", "drop", "truncate",
                                                         "corrupt_chunk", "wrong_hash"}


@pytest.mark.parametrize(("body", "reason"), [
    ({"fault_type": "meteor"}, "fault_type must be one of"),
    ({"fault_type": "delay", "probability": 0}, "probability must be in (0.0, 1.0]"),
    ({"fault_type": "delay", "probability": 2}, "probability"),
    ({"fault_type": "delay", "duration_seconds": -5}, "duration_seconds"),
    ({"fault_type": "delay", "parameters": {"seconds": "5"}}, "parameters.seconds must be a number"),
    ({"fault_type": "drop", "parameters": {"after": 1}}, "after must be true or false"),
    ({"fault_type": "truncate", "parameters": {"keep_bytes": -1}}, "keep_bytes"),
    ({"fault_type": "http_500", "parameters": {"sekonds": 5}}, "takes no parameter 'sekonds'"),
    ({"fault_type": "http_500", "device_id": ""}, "device_id"),
])
async def test_bad_fault_requests_are_400_with_the_reason(service: Service, body, reason) -> None:
    status, reply = await service.call("POST", "/fault/enable", operator=True, json=body)
    assert status == 400 and reason in reply["error"]


async def test_the_seed_shape_with_parameters_and_its_timeout_alias(service: Service) -> None:
    rule = await enable(service, "timeout", parameters={"probability": 0.25, "duration_seconds": 10, "seconds": 2})
    assert (rule["fault_type"], rule["probability"], rule["parameters"]["seconds"]) == ("delay", 0.25, 2)
    assert rule["expires_at"] - rule["created_at"] == 10


async def test_fault_routes_need_the_operator_token(service: Service) -> None:
    assert (await service.call("POST", "/fault/enable", json={"fault_type": "drop"}))[0] == 401
    assert (await service.call("POST", "/fault/disable"))[0] == 401


async def test_a_per_device_fault_finds_the_device_inside_a_secured_upload(service: Service) -> None:
    await enable(service, "http_503", device_id=DEVICE)
    device = FirmwareDevice()
    device.sample([[2301, 52, 40, 1200, 41, 355]] * 7)
    body = device.upload(keep_queue=True)
    async with service.http.post(service.url + "/process", data=body) as response:
        assert response.status == 503
    [event] = await logged(service)
    assert (event["device_id"], event["target"]) == (DEVICE, "POST /process")
    assert await service.storage.list_uploads(DEVICE) == []  # refused before ingest: nothing stored
    await service.call("POST", "/fault/disable", operator=True)
    async with service.http.post(service.url + "/process", data=device.upload()) as response:
        assert response.status == 200  # the device's retry (a fresh nonce) goes through
