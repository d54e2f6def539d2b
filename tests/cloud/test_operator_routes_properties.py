"""Arbitrary requests into every command, config, diagnostics and fault route: a JSON answer that is a
success or a 4xx, never a 5xx (the only 5xx the service sends are injected faults)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cloud.operator_service import DEVICE, Service, running_service

ROUTES = [
    ("POST", "/command/poll"),
    ("POST", "/command/result"),
    ("POST", "/commands/{device}"),
    ("GET", "/commands/{device}/poll"),
    ("POST", "/commands/{device}/result"),
    ("GET", "/commands/status/{device}"),
    ("GET", "/api/v1/devices/{device}/commands"),
    ("POST", "/changes"),
    ("POST", "/config/ack/{device}"),
    ("POST", "/config/update"),
    ("PUT", "/api/v1/devices/{device}/config"),
    ("GET", "/api/v1/devices/{device}/config"),
    ("GET", "/api/v1/devices/{device}/config/history"),
    ("POST", "/diagnostics/{device}"),
    ("GET", "/diagnostics/{device}"),
    ("GET", "/diagnostics/summary"),
    ("DELETE", "/diagnostics/{device}"),
    ("POST", "/fault/enable"),
    ("POST", "/fault/disable"),
    ("GET", "/fault/events"),
]

scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=4), max_leaves=10)
names = st.sampled_from(["set_power", "set_power_percentage", "write_register", "get_power_stats", "delay",
                         "http_500", "drop", "truncate", "wrong_hash", "poll_interval", "registers", "Vac1", "x"])
shaped = st.fixed_dictionaries({}, optional={
    "device_id": st.sampled_from([DEVICE, "", "made-up"]) | st.text(max_size=70),
    "timestamp": values, "command": names | values, "command_type": names | values, "command_id": values,
    "parameters": st.dictionaries(st.sampled_from(["power_value", "percentage", "register_address", "value",
                                                   "seconds", "after", "keep_bytes", "paths", "probability"]),
                                  values, max_size=3) | values,
    "status": st.sampled_from(["completed", "failed"]) | values, "result": values, "success": values,
    "result_data": values, "error_message": values, "fault_type": names | values, "probability": values,
    "duration_seconds": values, "poll_interval": values, "upload_interval": values,
    "registers": st.lists(names | st.integers(-1, 12), max_size=4) | values,
    "poll_frequency": values, "upload_frequency": values,
    "config_ack": st.fixed_dictionaries({}, optional={"accepted": values, "rejected": values, "unchanged": values})
    | values,
})
bodies = st.binary(max_size=120) | values.map(lambda v: json.dumps(v).encode()) | \
    shaped.map(lambda v: json.dumps(v).encode())
devices = st.sampled_from([DEVICE, "bench-2", "summary", "status"]) | st.text(min_size=1, max_size=70)
queries = st.dictionaries(st.sampled_from(["limit", "device_id"]), st.text(max_size=6), max_size=2)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.AbstractEventLoop, Service]]:
    """One service for every example, on a loop of its own (hypothesis drives synchronous tests)."""
    loop = asyncio.new_event_loop()
    running = running_service(tmp_path_factory.mktemp("fuzz"))
    service = loop.run_until_complete(running.__aenter__())
    try:
        yield loop, service
    finally:
        loop.run_until_complete(running.__aexit__(None, None, None))
        loop.close()


async def exchange(service: Service, method: str, path: str, body: bytes, query: dict[str, str]
                   ) -> tuple[int, str, Any]:
    async with service.http.request(method, service.url + path, data=body or None, params=query,
                                    headers={**service.auth, "Content-Type": "application/json"}) as response:
        text = await response.text(errors="replace")
        return response.status, response.content_type, json.loads(text) if text else None


@settings(max_examples=150, deadline=None)
@given(route=st.sampled_from(ROUTES), device=devices, body=bodies, query=queries)
def test_no_route_answers_5xx(live: tuple[asyncio.AbstractEventLoop, Service], route: tuple[str, str], device: str,
                              body: bytes, query: dict[str, str]) -> None:
    loop, service = live
    method, template = route
    path = template.format(device=quote(device, safe=""))
    status, content_type, reply = loop.run_until_complete(exchange(service, method, path, body, query))
    assert status < 500, (method, path, body, reply)
    assert content_type == "application/json"
    if status >= 400:
        assert reply["success"] is False and isinstance(reply["error"], str) and reply["error"]
    if path == "/fault/enable" and status == 200:  # an enabled fault would inject 5xx into later examples
        loop.run_until_complete(service.call("POST", "/fault/disable", operator=True))
