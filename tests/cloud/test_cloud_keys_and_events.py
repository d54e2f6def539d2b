"""The key registry and its CLI, the event bus, and the storage's upload statistics."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from cloud.cli import main
from cloud.events import SUBSCRIBER_QUEUE, EventBus
from cloud.key_registry import FIRMWARE_DEVICE_ID, FIRMWARE_FLEET_KEY, KeyFiles, KeyRegistry
from cloud.storage import Storage
from protocol.errors import DocumentError
from tests.cloud.storage_uploads import upload


def test_keys_cli_generates_tokens_and_device_keys_without_echoing_them_later(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", "--keys-dir", str(keys), "generate"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["keys", "--keys-dir", str(keys), "add-device", "inv-1"]) == 0
    key_hex = capsys.readouterr().out.split()[-1]
    assert main(["keys", "--keys-dir", str(keys), "add-device", "inv-2", "--key", "ab" * 32]) == 0
    assert main(["keys", "--keys-dir", str(keys), "add-device", "inv-3", "--key", "abc"]) == 2
    assert "abc" not in capsys.readouterr().err  # the refused key is not echoed, only its length

    assert main(["keys", "--keys-dir", str(keys), "list"]) == 0
    listing = capsys.readouterr().out
    assert "inv-1" in listing and "inv-2" in listing and "operator token operator" in listing
    assert FIRMWARE_DEVICE_ID in listing and "public" in listing
    assert key_hex not in listing and token not in listing
    for name in ("device_keys.json", "operator_tokens.json", "operator.token"):
        assert stat.S_IMODE(os.stat(keys / name).st_mode) == 0o600
    assert token not in (keys / "operator_tokens.json").read_text()  # only its hash is kept
    assert json.loads((keys / "device_keys.json").read_text())["inv-2"] == "ab" * 32


async def test_registry_serves_file_keys_then_the_fleet_key_and_sees_changes_at_once(tmp_path: Path) -> None:
    files = KeyFiles(tmp_path)
    registry = KeyRegistry(tmp_path, None, clock=lambda: 0.0)  # a clock that never moves: no periodic re-read
    assert await registry.key_for(FIRMWARE_DEVICE_ID) == FIRMWARE_FLEET_KEY
    assert await registry.key_for("inv-9") is None
    key = files.add_device("inv-9")
    assert await registry.key_for("inv-9") == key
    own = files.add_device(FIRMWARE_DEVICE_ID)  # a board given a key of its own: the fleet key stops working
    assert await registry.key_for(FIRMWARE_DEVICE_ID) == own
    assert not await registry.is_operator_token("x")
    token = files.generate_operator_token("ops")
    assert await registry.is_operator_token(token)
    assert not await registry.is_operator_token(token + "x")
    with pytest.raises(DocumentError):
        files.add_device("a/b")


async def test_event_bus_delivers_in_order_filters_and_drops_a_subscriber_that_falls_behind() -> None:
    bus = EventBus(wall_clock=lambda: 5.0)
    everything = bus.subscribe()
    telemetry_of_a = bus.subscribe({"telemetry"}, "a")
    bus.publish("telemetry", "a", {"n": 1})
    bus.publish("upload", "a", {"n": 2})
    bus.publish("telemetry", "b", {"n": 3})
    assert [(e.kind, e.data["n"], e.at) for e in [await everything.__anext__() for _ in range(3)]] == [
        ("telemetry", 1, 5.0), ("upload", 2, 5.0), ("telemetry", 3, 5.0)]
    assert (await telemetry_of_a.__anext__()).data == {"n": 1}
    everything.close()
    uploads = bus.subscribe({"upload"})

    for n in range(SUBSCRIBER_QUEUE + 1):  # nobody reads `telemetry_of_a` any more
        bus.publish("telemetry", "a", {"n": n})
    behind = [e.data["n"] async for e in telemetry_of_a]  # what was queued, in order, then the end
    assert behind == list(range(SUBSCRIBER_QUEUE)) and telemetry_of_a.overflowed
    assert bus.subscriber_count == 1

    waiting = asyncio.create_task(uploads.__anext__())
    await asyncio.sleep(0)
    bus.close()  # at shutdown every stream ends
    with pytest.raises(StopAsyncIteration):
        await waiting


async def test_upload_verdict_counts(storage: Storage) -> None:
    await storage.ingest(upload("d1", 5))
    await storage.ingest(upload("d1", 5))  # the same envelope again: a resend
    await storage.ingest(upload("d1", 4))
    await storage.record_rejected_upload("d1", "bad_mac", nonce=9)
    await storage.ingest(upload("d2", 1))
    assert await storage.upload_verdicts() == {"accepted": 2, "resend": 1, "replay": 1, "bad_mac": 1}
    assert await storage.upload_verdicts("d2") == {"accepted": 1}
    assert await storage.upload_verdicts("nobody") == {}
