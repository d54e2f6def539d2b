"""Commands over real HTTP: operators queue, firmware 1.0.4 polls and reports, leases, seed shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.command_message import (
    CommandResult,
    RegisterWrite,
    firmware_action,
    parse_poll_reply,
    poll_request,
)
from tests.cloud.operator_service import DEVICE, OTHER_DEVICE, Service, running_service, short_lease


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(tmp_path, limits=short_lease(lease_seconds=10, max_deliveries=2)) as running:
        yield running


async def queue(service: Service, device: str, kind: str, **parameters: object) -> str:
    status, body = await service.call("POST", f"/commands/{device}", operator=True,
                                      json={"command": kind, "parameters": parameters})
    assert status == 201, body
    return str(body["command_id"])


async def firmware_poll(service: Service, device: str = DEVICE) -> bytes:
    """The poll exactly as firmware 1.0.4 sends it; the raw reply body."""
    async with service.http.post(service.url + "/command/poll", data=poll_request(device),
                                 headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] and "chunked" not in response.headers.get("Transfer-Encoding", "")
        return await response.read()


async def test_firmware_round_trip_queue_poll_execute_report(service: Service) -> None:
    command_id = await queue(service, DEVICE, "set_power", power_value=5000)

    body = await firmware_poll(service)
    assert len(body) <= 511  # the firmware keeps 511 bytes of the reply
    command = parse_poll_reply(body)  # read as the firmware reads it
    assert (command.command_id, command.command_type, command.parameters) == \
        (command_id, "set_power", {"power_value": 5000})
    assert firmware_action(command) == RegisterWrite(8, 50)
    assert parse_poll_reply(await firmware_poll(service)) is None  # one at a time, no repeat while leased

    result = CommandResult.of(command, success=True)
    status, reply = await service.call("POST", "/command/result", data=result.to_json())
    assert status == 200 and reply["command_status"] == "completed"

    status, shown = await service.call("GET", f"/commands/status/{command_id}", operator=True)
    assert status == 200
    assert (shown["status"]["status"], shown["status"]["result"]) == \
        ("completed", "Command set_power: executed successfully")


async def test_an_unanswered_command_is_redelivered_then_timed_out(service: Service) -> None:
    command_id = await queue(service, DEVICE, "get_power_stats")
    deliveries = []
    for _ in range(2):
        deliveries.append(parse_poll_reply(await firmware_poll(service)).command_id)
        service.clock.advance(10)  # the lease runs out, no result came
    assert deliveries == [command_id, command_id]
    assert parse_poll_reply(await firmware_poll(service)) is None
    _, shown = await service.call("GET", f"/commands/status/{command_id}", operator=True)
    assert (shown["status"]["status"], shown["status"]["delivery_count"]) == ("timed_out", 2)
    # the next queued command is not held up behind it
    later = await queue(service, DEVICE, "reset_power_stats")
    assert parse_poll_reply(await firmware_poll(service)).command_id == later


async def test_commands_go_out_in_queue_order_one_per_result(service: Service) -> None:
    ids = [await queue(service, DEVICE, "set_power_percentage", percentage=p) for p in (10, 20, 30)]
    seen = []
    for _ in ids:
        command = parse_poll_reply(await firmware_poll(service))
        seen.append(command.command_id)
        await service.call("POST", "/command/result", data=CommandResult.of(command, False).to_json())
    assert seen == ids
    _, history = await service.call("GET", f"/api/v1/devices/{DEVICE}/commands", operator=True)
    assert [(c["command_id"], c["status"]) for c in history["commands"]] == [(i, "failed") for i in reversed(ids)]


@pytest.mark.parametrize(("parameters", "reason"), [
    ({"register_address": 0, "value": 1}, "read-only"),
    ({"register_address": 8, "value": 101}, "0..100"),
    ({"register_address": 42, "value": 1}, "no such register"),
    ({"register_address": 8, "value": "50"}, "integer"),
    ({"register_address": 8}, "lacks 'value'"),
])
async def test_write_register_is_validated_with_a_clear_400(service: Service, parameters, reason) -> None:
    status, body = await service.call("POST", f"/commands/{DEVICE}", operator=True,
                                      json={"command": "write_register", "parameters": parameters})
    assert status == 400
    assert body["success"] is False and reason in body["error"]
    _, history = await service.call("GET", f"/api/v1/devices/{DEVICE}/commands", operator=True)
    assert history["commands"] == []


async def test_a_writable_register_in_range_is_queued(service: Service) -> None:
    command_id = await queue(service, DEVICE, "write_register", register_address=8, value=100)
    command = parse_poll_reply(await firmware_poll(service))
    assert command.command_id == command_id
    assert firmware_action(command, write_register=True) == RegisterWrite(8, 100)


@pytest.mark.parametrize("body", [
    {"command": "set_power", "parameters": {"power_value": -1}},
    {"command": "set_power", "parameters": {"power_value": 50.5}},
    {"command": "set_power_percentage", "parameters": {"percentage": 101}},
    {"command": "self_destruct"},
    {"parameters": {}},
    {"command": "get_power_stats", "command_type": "get_power_stats"},
    {"command": "get_power_stats", "parameters": {"extra": 1}},
])
async def test_bad_command_requests_are_400(service: Service, body) -> None:
    status, reply = await service.call("POST", f"/commands/{DEVICE}", operator=True, json=body)
    assert status == 400 and reply["success"] is False and reply["error"]


async def test_queueing_needs_the_operator_token(service: Service) -> None:
    status, _ = await service.call("POST", f"/commands/{DEVICE}", json={"command": "get_power_stats"})
    assert status == 401


async def test_seed_shapes_poll_and_result(service: Service) -> None:
    command_id = await queue(service, OTHER_DEVICE, "set_power_percentage", percentage=75)
    status, polled = await service.call("GET", f"/commands/{OTHER_DEVICE}/poll")
    assert status == 200
    [listed] = polled["commands"]
    assert (listed["command_id"], listed["command"], listed["parameters"], listed["status"]) == \
        (command_id, "set_power_percentage", {"percentage": 75}, "executing")
    assert (await service.call("GET", f"/commands/{OTHER_DEVICE}/poll"))[1]["commands"] == []

    # a result posted under another device's path is not taken
    wrong = await service.call("POST", f"/commands/{DEVICE}/result", json={"command_id": command_id, "success": True})
    assert wrong[0] == 404
    status, _ = await service.call("POST", f"/commands/{OTHER_DEVICE}/result",
                                   json={"command_id": command_id, "success": False, "error_message": "bus busy",
                                         "result_data": {"attempts": 3}})
    assert status == 200
    _, shown = await service.call("GET", f"/commands/status/{command_id}", operator=True)
    assert shown["status"]["status"] == "failed"
    assert "bus busy" in shown["status"]["result"] and '"attempts":3' in shown["status"]["result"]


async def test_results_for_unknown_or_undelivered_commands(service: Service) -> None:
    unknown = CommandResult("nope", "completed", "Command x: executed successfully").to_json()
    assert (await service.call("POST", "/command/result", data=unknown))[0] == 404
    command_id = await queue(service, DEVICE, "get_power_stats")
    early = CommandResult(command_id, "completed", "Command get_power_stats: executed successfully").to_json()
    assert (await service.call("POST", "/command/result", data=early))[0] == 409
    bad_status = b'{"command_id":"%s","status":"done","result":""}' % command_id.encode()
    assert (await service.call("POST", "/command/result", data=bad_status))[0] == 400


async def test_a_poll_from_an_unknown_device_creates_nothing(service: Service) -> None:
    reply = parse_poll_reply(await firmware_poll(service, "made-up-device"))
    assert reply is None
    assert await service.storage.get_device("made-up-device") is None
    status, _ = await service.call("GET", "/commands/made-up-device/poll")
    assert status == 200 and await service.storage.get_device("made-up-device") is None


async def test_status_of_an_unknown_command_is_404_and_stats_count(service: Service) -> None:
    assert (await service.call("GET", "/commands/status/nope", operator=True))[0] == 404
    await queue(service, DEVICE, "get_power_stats")
    status, stats = await service.call("GET", "/commands/stats", operator=True)
    assert status == 200 and (stats["stats"]["total_commands"], stats["stats"]["queued_commands"]) == (1, 1)
