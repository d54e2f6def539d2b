"""Arbitrary requests into every OTA and read-API route: a JSON success or a JSON 4xx, never a 5xx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cloud.ota_stack import CloudStack, cloud_stack, image_of

BOARD = "ESP32_EcoWatt_Smart"
ROUTES = [
    ("GET", "/ota/check/{id}"), ("POST", "/ota/initiate/{id}"), ("GET", "/ota/chunk/{id}"),
    ("POST", "/ota/complete/{id}"), ("POST", "/ota/report/{id}"), ("GET", "/ota/status"),
    ("GET", "/ota/status/{id}"), ("POST", "/ota/cancel/{id}"), ("GET", "/ota/stats"),
    ("GET", "/api/v1/devices/{id}/ota"), ("GET", "/api/v1/firmware"), ("POST", "/api/v1/firmware"),
    ("POST", "/api/v1/firmware/uploads"), ("PUT", "/api/v1/firmware/uploads/{id}"), ("GET", "/api/v1/firmware/{id}"),
    ("GET", "/api/v1/rollouts"), ("POST", "/api/v1/rollouts"), ("GET", "/api/v1/rollouts/{id}"),
    ("PATCH", "/api/v1/rollouts/{id}"), ("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/{id}"),
    ("GET", "/metrics"), ("GET", "/api/v1/openapi.json"),
]
IDS = st.one_of(st.sampled_from([BOARD, "1.0.5", "1", "0" * 32, "a" * 80, "é", "-1"]),
                st.text(min_size=1, max_size=12))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                    st.text(max_size=12))
FIELDS = st.sampled_from(["firmware_version", "success", "phase", "status", "version", "chunks_done",
                          "total_chunks", "running_version", "reason", "upload_id", "sha256", "devices", "name",
                          "state", "device_type", "security_counter", "scheme"])
JSON_BODIES = st.dictionaries(FIELDS, st.one_of(SCALARS, st.lists(SCALARS, max_size=3)), max_size=6).map(
    lambda d: json.dumps(d).encode())
BODIES = st.one_of(st.binary(max_size=200), JSON_BODIES, st.sampled_from([b"", b"{}", b"[]", b"null", b"{"]))
QUERIES = st.dictionaries(st.sampled_from(["version", "chunk", "offset", "kinds", "device_id"]),
                          st.one_of(st.sampled_from(["1.0.5", "0", "4", "-1", "99999999999"]), st.text(max_size=10)),
                          max_size=3)


@dataclass
class LoopStack:
    loop: asyncio.AbstractEventLoop
    stack: CloudStack

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopStack]:
    loop = asyncio.new_event_loop()
    opening = cloud_stack(Path(tmp_path_factory.mktemp("fuzz")))
    stack = loop.run_until_complete(opening.__aenter__())
    shared = LoopStack(loop, stack)
    # A release offered to the board and an open session, so requests reach the deeper checks too.
    shared.run(stack.publish(image_of(3000), "1.0.5"))
    shared.run(stack.rollout("1.0.5", [BOARD]))
    try:
        yield shared
    finally:
        loop.run_until_complete(opening.__aexit__(None, None, None))
        loop.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), ident=IDS, body=BODIES, query=QUERIES, operator=st.booleans())
def test_any_request_gets_json_success_or_a_json_4xx(shared: LoopStack, route: tuple[str, str], ident: str,
                                                     body: bytes, query: dict[str, str], operator: bool) -> None:
    method, template = route
    path = template.replace("{id}", quote(ident, safe=""))

    async def send() -> tuple[int, str, bytes]:
        headers = shared.stack.auth if operator else {}
        async with shared.stack.client.request(method, path, params=query, data=body, headers=headers) as response:
            return response.status, response.content_type, await response.read()

    status, content_type, raw = shared.run(send())
    assert status < 500, (method, path, status, raw[:200])
    if path == "/metrics":
        return
    assert content_type == "application/json", (method, path, status)
    answer = json.loads(raw)
    if status >= 400:
        assert answer["success"] is False and answer["error"], answer
