"""The read API over real HTTP: devices, server-sent events, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from cloud.openapi import needs_operator_token
from cloud.operator_client import read_sse
from tests.cloud.firmware_uploads import FirmwareDevice
from tests.cloud.ota_stack import CloudStack, cloud_stack, image_of
from tests.cloud.running_cloud import running_cloud

BOARD = "ESP32_EcoWatt_Smart"
ROWS = [[2431 + s, 164 - s, 72 + s, 4153 + 5 * s, 64, 546] for s in range(7)]


@pytest.fixture
async def stack(tmp_path: Path):
    async with cloud_stack(tmp_path) as running:
        yield running


async def process(stack: CloudStack, device: FirmwareDevice) -> None:
    device.sample(ROWS)
    response = await stack.client.post("/process", data=device.upload(), headers={"Content-Type": "application/json"})
    assert response.status == 200, await response.text()


async def test_devices_show_reported_version_last_contact_config_and_state(stack: CloudStack) -> None:
    await process(stack, FirmwareDevice())
    await stack.client.get(f"/ota/check/{BOARD}?version=1.0.4")
    await stack.operator("PUT", f"/api/v1/devices/{BOARD}/config", json={"poll_interval": 5})

    listed = (await stack.operator("GET", "/api/v1/devices"))["devices"]
    board = next(d for d in listed if d["device_id"] == BOARD)
    assert board["firmware_version"] == "1.0.4" and board["last_seen"] is not None
    assert not any("key" in field for d in listed for field in d)

    device = await stack.operator("GET", f"/api/v1/devices/{BOARD}")
    assert (device["firmware_version"], device["firmware_version_reported_by"]) == ("1.0.4", "ota")
    assert device["state"] and device["last_seen"] >= device["first_seen"]
    assert device["config"]["config"]["poll_interval"] == 5 and device["last_nonce"] == 10001
    assert device["ota_session"] is None
    await stack.operator("GET", "/api/v1/devices/nobody", expect=404)


async def test_diagnostics_tell_the_version_when_nothing_else_did(stack: CloudStack) -> None:
    await process(stack, FirmwareDevice())
    response = await stack.client.post(f"/diagnostics/{BOARD}", json={"firmware_version": "1.1.0", "uptime": 5})
    assert response.status in (200, 201)
    device = await stack.operator("GET", f"/api/v1/devices/{BOARD}")
    assert (device["firmware_version"], device["firmware_version_reported_by"]) == ("1.1.0", "diagnostics")


async def test_the_event_stream_delivers_what_happens(stack: CloudStack) -> None:
    response = await stack.client.get("/api/v1/events", headers={"Accept": "text/event-stream", **stack.auth})
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    ota_only = await stack.client.get(f"/api/v1/events?kinds=ota&device_id={BOARD}", headers=stack.auth)
    events, filtered = read_sse(response.content), read_sse(ota_only.content)

    await process(stack, FirmwareDevice())
    async with asyncio.timeout(10):
        telemetry = await anext(e async for e in events if e.kind == "telemetry")
    assert telemetry.data["device_id"] == BOARD and telemetry.data["kind"] == "telemetry"

    await stack.publish(image_of(3000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD, "other"])
    response = await stack.client.post(f"/ota/initiate/{BOARD}", json={"firmware_version": "1.0.5"})
    assert response.status == 201
    async with asyncio.timeout(10):
        first = await anext(filtered)  # the rollout for "other" and the telemetry were filtered out
    assert (first.kind, first.data["device_id"], first.data["data"]["event"]) == ("ota", BOARD, "rollout")
    async with asyncio.timeout(10):
        second = await anext(filtered)
    assert second.data["data"]["event"] == "initiated" and second.data["data"]["version"] == "1.0.5"
    response.close()
    ota_only.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_responses_by_route_and_read_the_database(stack: CloudStack) -> None:
    await process(stack, FirmwareDevice())
    await stack.publish(image_of(3000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    for device in (BOARD, "other-device"):
        await stack.client.get(f"/ota/check/{device}?version=1.0.4")
    await stack.client.post(f"/ota/initiate/{BOARD}", json={"firmware_version": "1.0.5"})
    await stack.client.get(f"/ota/chunk/{BOARD}?version=1.0.5&chunk=0")

    response = await stack.client.get("/metrics")  # no token needed
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = metric_samples(await response.text())
    route = (("method", "GET"), ("route", "/ota/check/{device_id}"), ("status", "200"))
    assert samples[("ecowatt_http_responses_total", route)] == 2  # by pattern: never one series per device
    assert samples[("ecowatt_rows", (("table", "firmware"),))] == 1
    assert samples[("ecowatt_ota_sessions", (("status", "active"),))] == 1
    assert samples[("ecowatt_uploads_total", (("verdict", "accepted"),))] == 1
    stored = [value for (name, _), value in samples.items() if name == "ecowatt_samples_total"]
    assert sum(stored) == 7 * 6  # one batch of 7 samples of 6 registers, per codec and decode status
    assert ("ecowatt_mqtt_outbox_pending", ()) in samples


async def test_the_openapi_document_is_valid_and_covers_every_route(stack: CloudStack) -> None:
    document = await stack.operator("GET", "/api/v1/openapi.json")
    validate(document)
    served = {(route.method.lower(), route.resource.canonical) for route in stack.app.router.routes()
              if route.method not in ("HEAD", "*") and route.resource is not None}
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert served == documented
    assert len(served) > 40  # every part of the service is in (device, seed, operator, read API)

    check = document["paths"]["/ota/check/{device_id}"]["get"]
    assert check["security"] == [] and check["summary"].startswith("Is there an update")
    assert [p["name"] for p in check["parameters"]] == ["device_id", "version"]
    assert document["paths"]["/ota/stats"]["get"]["security"] == [{"operatorToken": []}]
    assert document["paths"]["/metrics"]["get"]["security"] == []


@pytest.mark.parametrize(("method", "pattern", "operator"), [
    ("POST", "/process", False),
    ("GET", "/ota/chunk/{device_id}", False),
    ("GET", "/health", False),
    ("GET", "/ota/status/{device_id}", True),
    ("DELETE", "/security/nonces", True),
    ("POST", "/api/v1/rollouts", True),
])
def test_the_document_applies_the_services_access_rule(method: str, pattern: str, operator: bool) -> None:
    assert needs_operator_token(method, pattern) is operator


async def test_the_document_matches_what_the_service_enforces(stack: CloudStack) -> None:
    document = await stack.operator("GET", "/api/v1/openapi.json")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not operation["security"] or "{" in path or path == "/api/v1/events":
                continue
            response = await stack.client.request(method.upper(), path)  # no token
            assert response.status == 401, (method, path)
            response.close()


async def test_an_open_event_stream_does_not_hold_up_a_shutdown(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    opening = running_cloud(tmp_path)
    cloud = await opening.__aenter__()
    async with aiohttp.ClientSession() as http:
        stream = await http.get(f"{cloud.url}/api/v1/events", headers={"Authorization": f"Bearer {cloud.token}"})
        assert stream.status == 200
        await opening.__aexit__(None, None, None)  # drains in-flight requests, the stream among them
        assert await stream.content.read() == b""  # the server ended it
    assert "still in flight" not in caplog.text
