"""Remote configuration over real HTTP: operators set it, /changes delivers it once in the firmware's
flat shape, the spec firmware's acknowledgement lands in the history."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.config_message import (
    FIRMWARE_REPLY_LIMIT,
    DeviceSettings,
    StoredConfig,
    config_request,
    firmware_apply,
    parse_config_reply,
    review_config,
)
from tests.cloud.operator_service import DEVICE, Service, running_service

FLAT_KEYS = ["Changed", "pollFreqChanged", "newPollTimer", "uploadFreqChanged", "newUploadTimer", "regsChanged",
             "regsCount", "regs"]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(tmp_path) as running:
        yield running


async def firmware_check(service: Service, device: str = DEVICE) -> bytes:
    """`POST /changes` as firmware 1.0.4 sends it; the raw body it reads."""
    async with service.http.post(service.url + "/changes", data=config_request(device, 30512),
                                 headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) <= FIRMWARE_REPLY_LIMIT
        return await response.read()


async def set_config(service: Service, body: dict[str, object], device: str = DEVICE) -> tuple[int, dict]:
    return await service.call("PUT", f"/api/v1/devices/{device}/config", operator=True, json=body)


async def test_a_change_is_delivered_once_in_the_exact_flat_shape(service: Service) -> None:
    status, _ = await set_config(service, {"poll_interval": 9, "registers": ["Vac1", "Iac1", "pac", 5]})
    assert status == 200

    first = json.loads(await firmware_check(service))
    assert list(first) == FLAT_KEYS
    assert first == {"Changed": True, "pollFreqChanged": True, "newPollTimer": 9, "uploadFreqChanged": False,
                     "newUploadTimer": 15, "regsChanged": True, "regsCount": 4, "regs": 0b10_0010_0011}
    assert all(type(first[k]) is bool for k in ("Changed", "pollFreqChanged", "uploadFreqChanged", "regsChanged"))

    stored = firmware_apply(parse_config_reply(json.dumps(first)), StoredConfig())  # what 1.0.4 keeps in NVS
    assert (stored.poll_us, stored.upload_us, stored.regs_mask, stored.reg_count) == (9_000_000, None, 0b10_0010_0011, 4)

    second = json.loads(await firmware_check(service))
    assert second["Changed"] is False and not any(second[k] for k in ("pollFreqChanged", "uploadFreqChanged",
                                                                      "regsChanged"))
    assert firmware_apply(parse_config_reply(json.dumps(second)), StoredConfig()) == StoredConfig()


async def test_nothing_set_answers_unchanged_defaults(service: Service) -> None:
    reply = parse_config_reply(await firmware_check(service, "never-configured"))
    assert not reply.changed and (reply.new_poll_timer, reply.new_upload_timer) == (2, 15)
    assert await service.storage.get_device("never-configured") is None


async def test_the_spec_firmware_ack_is_recorded_in_the_history(service: Service) -> None:
    await set_config(service, {"upload_interval": 60, "registers": [0, 1, 9]})
    offer = parse_config_reply(await firmware_check(service))
    review = review_config(offer, DeviceSettings())  # what the spec firmware does with it
    status, answer = await service.call("POST", f"/config/ack/{DEVICE}", data=review.ack.to_json())
    assert status == 200 and (answer["recorded"], answer["outcome"]) == (True, "accepted")

    _, history = await service.call("GET", f"/api/v1/devices/{DEVICE}/config/history", operator=True)
    [entry] = history["history"]
    assert (entry["status"], entry["outcome"], entry["changes"]) == \
        ("acknowledged", "accepted", ["upload_interval", "registers"])
    assert entry["ack"] == {"accepted": ["upload_interval", "registers"], "rejected": [],
                            "unchanged": ["poll_interval"]}
    assert entry["config"]["register_names"] == ["Vac1", "Iac1", "Pac"]
    assert entry["delivered_at"] is not None and entry["acked_at"] is not None


async def test_history_keeps_every_version_with_its_outcome(service: Service) -> None:
    await set_config(service, {"poll_interval": 5})
    await set_config(service, {"poll_interval": 6})  # supersedes version 1 before delivery
    await firmware_check(service)
    ack = b'{"config_ack":{"accepted":[],"rejected":[{"field":"poll_interval","reason":"too fast"}],"unchanged":[]}}'
    assert (await service.call("POST", f"/config/ack/{DEVICE}", data=ack))[1]["outcome"] == "rejected"
    _, history = await service.call("GET", f"/api/v1/devices/{DEVICE}/config/history", operator=True)
    assert [(v["version"], v["status"], v["outcome"]) for v in history["history"]] == \
        [(2, "acknowledged", "rejected"), (1, "superseded", None)]


async def test_an_ack_with_nothing_delivered_is_taken_but_not_recorded(service: Service) -> None:
    ack = b'{"config_ack":{"accepted":[],"rejected":[],"unchanged":["poll_interval"]}}'
    status, body = await service.call("POST", f"/config/ack/{DEVICE}", data=ack)
    assert status == 200 and body["recorded"] is False  # else the device would resend it for ever


@pytest.mark.parametrize(("body", "reasons"), [
    ({"poll_interval": 0}, ["poll_interval must be 1..3600 s"]),
    ({"upload_interval": 3601, "poll_interval": 1.5}, ["poll_interval must be a whole number",
                                                       "upload_interval must be 1..3600 s"]),
    ({"registers": ["Vac1", "Bogus"]}, ["no register 'Bogus'"]),
    ({"registers": [10]}, ["no register 10"]),
    ({"registers": ["Vac1", 0]}, ["listed twice"]),
    ({"registers": []}, ["non-empty list"]),
    ({}, ["nothing to change"]),
    ({"poll": 5}, ["unknown field 'poll'"]),
])
async def test_invalid_configuration_is_refused_with_every_reason(service: Service, body, reasons) -> None:
    status, reply = await set_config(service, body)
    assert status == 400 and reply["success"] is False
    for reason in reasons:
        assert reason in reply["error"]
    assert (await service.call("GET", f"/api/v1/devices/{DEVICE}/config", operator=True))[0] == 404


async def test_the_m4_management_shape_takes_microseconds(service: Service) -> None:
    status, body = await service.call("POST", "/config/update", operator=True,
                                      json={"device_id": DEVICE, "poll_frequency": 4_000_000, "registers": ["Pac"]})
    assert status == 200 and body["updated_fields"] == ["poll_interval", "registers"]
    offer = parse_config_reply(await firmware_check(service))
    assert (offer.new_poll_timer, offer.regs, offer.regs_count) == (4, 1 << 9, 1)
    status, body = await service.call("POST", "/config/update", operator=True,
                                      json={"device_id": DEVICE, "poll_frequency": 1_500_000})
    assert status == 400 and "whole seconds" in body["error"]


async def test_config_routes_need_the_operator_token_but_changes_does_not(service: Service) -> None:
    status, _ = await service.call("PUT", f"/api/v1/devices/{DEVICE}/config", json={"poll_interval": 5})
    assert status == 401
    assert (await service.call("GET", f"/api/v1/devices/{DEVICE}/config/history"))[0] == 401
    assert (await service.call("POST", "/changes", data=config_request(DEVICE, 1)))[0] == 200


@pytest.mark.parametrize("body", [b"", b"[]", b'{"device_id":"x"}', b'{"timestamp":1}', b"\xff",
                                  b'{"device_id":"x","timestamp":-1}'])
async def test_malformed_changes_requests_are_400(service: Service, body: bytes) -> None:
    status, reply = await service.call("POST", "/changes", data=body)
    assert status == 400 and reply["success"] is False
