"""Whatever arrives, the cloud's C1 routes answer JSON: success or a clear 4xx, never a 5xx.

The service runs in a thread of its own (its own event loop) so hypothesis can drive it with plain
blocking HTTP requests over loopback. Authentic envelopes around arbitrary documents are included:
the MAC is not the only gate, the decoders behind it must hold too.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.device_mirror import PACKED_PREFIX, DeviceMirror
from cloud.key_registry import KeyFiles
from cloud.server import CloudServer
from cloud.upload_decoder import decode_firmware_upload
from protocol.envelope import REFERENCE_PSK, build_envelope
from protocol.upload_document import CompressedPacket, PacketMetadata, UploadDocument
from tests.cloud.running_cloud import cloud_settings

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DEVICE = "ESP32_EcoWatt_Smart"


@dataclass
class ThreadedCloud:
    host: str
    port: int
    token: str
    nonces: Iterator[int]

    def call(self, method: str, path: str, body: bytes | None = None, *, operator: bool = False,
             content_type: str = "application/json") -> tuple[int, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = {"Content-Type": content_type}
        if operator:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            assert response.getheader("Content-Length") is not None
            return response.status, json.loads(data)
        finally:
            connection.close()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCloud]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = cloud_settings(directory)
    settings_.data_dir.mkdir(parents=True)
    token = KeyFiles(settings_.keys_dir).generate_operator_token()
    KeyFiles(settings_.keys_dir).add_device("seed-dev", bytes(range(32)))
    loop = asyncio.new_event_loop()
    server = CloudServer(settings_)
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def run() -> None:
        nonlocal stop
        stop = asyncio.Event()
        await server.start()
        started.set()
        await stop.wait()
        await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(30)
    address = urlsplit(server.url)
    assert address.hostname is not None and address.port is not None
    yield ThreadedCloud(address.hostname, address.port, token, itertools.count(1))
    loop.call_soon_threadsafe(lambda: stop.set() if stop else None)
    thread.join(30)


def _check(status: int, data: Any) -> None:
    assert status < 500, data
    assert isinstance(data, dict)
    if status >= 400:
        assert data["success"] is False and data["error"] and data["code"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
device_ids = st.text(min_size=1, max_size=80)


@FUZZ
@given(body=st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bodies_on_the_upload_routes(cloud: ThreadedCloud, body: bytes) -> None:
    for path in ("/process", "/security/validate/seed-dev", "/aggregated/seed-dev", "/integration/test/sync"):
        _check(*cloud.call("POST", path, body))


packet_entries = st.fixed_dictionaries({
    "compressed_binary": st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
                                 max_size=60) | json_values,
    "decompression_metadata": st.fixed_dictionaries({
        "method": st.sampled_from(["BATCH_DICTIONARY", "BATCH_BITPACK"]) | json_values,
        "register_count": st.integers(-1, 12) | json_values,
        "original_size_bytes": st.integers(0, 200),
        "compressed_size_bytes": st.integers(-1, 200) | json_values,
        "timestamp": st.integers(-1, 2**32) | json_values,
        "register_layout": st.lists(st.integers(-2, 12), max_size=12) | json_values,
    }),
})
documents = st.fixed_dictionaries({
    "device_id": st.just(DEVICE) | json_values,
    "timestamp": st.integers(-5, 2**33) | json_values,
    "data_type": st.just("compressed_sensor_batch"),
    "total_samples": st.integers(0, 3),
    "register_mapping": st.just({}) | json_values,
    "compressed_data": st.lists(packet_entries, max_size=3) | json_values,
})


@FUZZ
@given(document=documents | json_values, truncate=st.integers(0, 400), encrypted=st.booleans())
def test_authentic_envelopes_around_arbitrary_documents(cloud: ThreadedCloud, document: Any, truncate: int,
                                                         encrypted: bool) -> None:
    text = json.dumps(document).encode()
    text = text[:truncate] if truncate < len(text) and truncate % 3 == 0 else text
    status, data = cloud.call("POST", "/process", build_envelope(REFERENCE_PSK, next(cloud.nonces), text,
                                                                 encrypted=encrypted))
    _check(status, data)
    assert status in (200, 401), data  # another device named in the document: not this key's
    if not isinstance(document, dict) or document.get("device_id", DEVICE) == DEVICE:
        assert status == 200, data  # authentic, for the firmware's device: accepted, decodable or not


seed_documents = st.fixed_dictionaries({}, optional={
    "device_id": st.just("seed-dev") | json_values,
    "timestamp": json_values,
    "compressed_data": st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | json_values,
    "aggregated_data": st.lists(st.dictionaries(st.sampled_from(["Vac1", "Pac", "register", "value", "avg", "x"]),
                                                json_values, max_size=3) | json_values, max_size=4) | json_values,
    "register_layout": st.lists(st.integers(-1, 12) | st.text(max_size=5), max_size=4) | json_values,
})


@FUZZ
@given(document=seed_documents)
def test_authentic_seed_envelopes_around_arbitrary_documents(cloud: ThreadedCloud, document: dict[str, Any]) -> None:
    body = build_envelope(bytes(range(32)), next(cloud.nonces), json.dumps(document).encode())
    _check(*cloud.call("POST", "/aggregated/seed-dev", body))


@FUZZ
@given(device_id=device_ids, query=st.dictionaries(
    st.sampled_from(["since", "until", "limit", "after_id", "newest_first", "device_id"]), st.text(max_size=30),
    max_size=4))
def test_arbitrary_ids_and_queries_on_the_read_and_operator_routes(cloud: ThreadedCloud, device_id: str,
                                                                   query: dict[str, str]) -> None:
    segment = quote(device_id, safe="")
    qs = "?" + urlencode(query)
    for method, path, operator in [
        ("GET", f"/api/v1/devices/{segment}/telemetry{qs}", True),
        ("GET", f"/api/v1/devices/{segment}/uploads{qs}", True),
        ("GET", f"/api/v1/devices/{segment}/packets{qs}", True),
        ("GET", f"/config{qs}", False),
        ("GET", f"/compression/stats{qs}", True),
        ("GET", f"/security/device/{segment}", True),
        ("DELETE", f"/security/nonces/{segment}", True),
        ("POST", f"/security/validate/{segment}", False),
        ("POST", f"/aggregated/{segment}", False),
    ]:
        _check(*cloud.call(method, path, b"{}", operator=operator))


@settings(max_examples=200, deadline=None)
@given(state=st.text(max_size=200) | json_values.map(json.dumps)
       | st.binary(max_size=300).map(lambda b: PACKED_PREFIX + base64.b64encode(b).decode()),
       timestamp=st.integers(0, 2**32 - 1), layout=st.lists(st.integers(-1, 12), max_size=12),
       data=st.text(max_size=40), size=st.integers(0, 200), flip=st.integers(0, 4000), cut=st.integers(0, 4000))
def test_the_decoder_takes_any_stored_state_and_any_packet(state: str, timestamp: int, layout: list[int],
                                                           data: str, size: int, flip: int, cut: int) -> None:
    """The decoder runs inside the storage transaction: whatever it is given, it returns."""
    entry = CompressedPacket(data, PacketMetadata("BATCH_BITPACK", len(layout), 0, size, timestamp, tuple(layout)))
    document = UploadDocument(DEVICE, timestamp, (entry, entry))
    decoded = decode_firmware_upload(document, state, 1000.0)
    assert len(decoded.packets) == 2
    # a stored state of the right shape, damaged (a byte changed, or cut short), is survived too
    assert decoded.codec_state is not None and decoded.codec_state.startswith(PACKED_PREFIX)
    packed = bytearray(base64.b64decode(decoded.codec_state[len(PACKED_PREFIX):]))
    packed[flip % len(packed)] ^= 0xFF
    for damaged in (bytes(packed), bytes(packed[:cut % len(packed)])):
        decode_firmware_upload(document, PACKED_PREFIX + base64.b64encode(damaged).decode(), 1000.0)
    assert DeviceMirror.load(decoded.codec_state).note is None  # what it stores, it can read back
