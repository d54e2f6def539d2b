"""Fleets beyond one machine: several cloud processes on one PostgreSQL, loaded by `ecowatt fleet load`
(Locust whose users are emulated boards), keep the cloud's guarantees.

One PostgreSQL cluster and three `ecowatt cloud serve --db ...` processes are shared by the module;
the boards are spread over the three URLs round-robin. While the fleet runs, the test races copies of
one envelope against all three processes. Afterwards: every upload a board saw acknowledged (its
ledger) is stored exactly once, with its packets once; every race stored one copy and refused the
rest as replays on every process; nothing answered 5xx (Locust's CSV); the processes still serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import secrets
import select
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import pg_cluster
from harness.fleet_cli import register_in_database
from protocol.compression.batch import Batch
from protocol.compression.firmware_base64 import encode_compressed_binary
from protocol.compression.packet import method_label
from protocol.compression.selection import compress_batch
from protocol.compression.state import CodecState
from protocol.envelope import build_envelope
from protocol.registers import DEFAULT_SELECTION
from protocol.upload_document import firmware_document, firmware_packet

CLOUD_PROCESSES = 3
HTTP_NAMES = ("/process", "/changes", "/command/poll")  # every board makes these within seconds
PG_DSN_VARIABLE = "ECOWATT_TEST_PG_DSN"

pytestmark = pytest.mark.postgres


def fleet_command() -> list[str]:
    """`ecowatt fleet load`; until harness/cli.py mounts the fleet commands, the same parser alone."""
    from harness import cli

    module = "harness.cli" if "harness.fleet_cli" in cli.COMMAND_MODULES else "harness.fleet_cli"
    return [sys.executable, "-m", module, "fleet", "load"]


@dataclass
class Stack:
    dsn: str
    urls: list[str]
    processes: list[subprocess.Popen[bytes]]
    directory: Path


def _listening_url(process: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """The URL of the one `listening on` line a server prints when ready."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("listening on "):
        process.kill()
        raise AssertionError(f"no listening line: {line!r}; stderr: {process.communicate()[1].decode()[-2000:]}")
    return line.removeprefix("listening on ")


async def _fresh_database(server_dsn: str) -> str:
    """A new empty database on the server: a shared server keeps other runs' data elsewhere."""
    import asyncpg

    name = f"ecowatt_fleet_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base, _, _ = server_dsn.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("fleet")
    with contextlib.ExitStack() as cleanup:
        server_dsn = os.environ.get(PG_DSN_VARIABLE)
        if not server_dsn:
            if not pg_cluster.is_installed():
                pytest.skip("PostgreSQL server not installed")
            server_dsn = cleanup.enter_context(pg_cluster.PgCluster(fsync=False)).dsn
        dsn = asyncio.run(_fresh_database(server_dsn))
        serve = [sys.executable, "-m", "cloud.cli", "cloud", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--db", dsn, "--keys-dir", str(directory / "keys"), "--data-dir", str(directory / "data"),
                 "--firmware-dir", str(directory / "firmware"), "--open-operator-api", "--log-level", "WARNING"]
        processes: list[subprocess.Popen[bytes]] = []

        def stop_all() -> None:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()

        cleanup.callback(stop_all)

        def start() -> subprocess.Popen[bytes]:
            process = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=directory)
            processes.append(process)
            return process

        urls = [_listening_url(start())]  # the first one migrates the schema
        others = [start() for _ in range(CLOUD_PROCESSES - 1)]
        urls += [_listening_url(process) for process in others]
        yield Stack(dsn, urls, processes, directory)


# --- racing copies of one envelope against every process -----------------------------------------


def signed_upload(device_id: str, key: bytes, nonce: int) -> bytes:
    """An envelope as a board makes it: one packet of 7 compressed samples of the default selection."""
    layout = list(DEFAULT_SELECTION)
    samples = [[2300 + nonce % 50 + i + r for r in range(len(layout))] for i in range(7)]
    encoded = compress_batch(Batch.from_samples(samples, layout), CodecState()).encoded
    timestamp = nonce * 1000  # a different packet for every nonce
    packet = firmware_packet(encode_compressed_binary(encoded.packet), method=method_label(encoded.packet),
                             register_layout=layout, compressed_size=len(encoded.packet), timestamp=timestamp,
                             compression_time_us=3400)
    return build_envelope(key, nonce, firmware_document(device_id, timestamp, [packet]).to_json())


async def _send(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str | None]:
    async with http.post(url + "/process", data=body, headers={"Content-Type": "application/json"}) as reply:
        data = await reply.read()
        if reply.status == 200:
            return 200, reply.headers.get("X-EcoWatt-Verdict")
        try:
            return reply.status, json.loads(data).get("code")
        except ValueError:
            return reply.status, data[:80].decode(errors="replace")


async def race(urls: list[str], body: bytes, copies_per_process: int) -> Counter[tuple[int, str | None]]:
    """Send the copies to every process at once (one connection per copy)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        answers = await asyncio.gather(*(_send(http, url, body) for url in urls for _ in range(copies_per_process)))
    return Counter(answers)


async def duplicate_races(stack: Stack, device_id: str, rounds: int, pause: float) -> list[Counter[Any]]:
    key = secrets.token_bytes(32)
    await register_in_database(stack.dsn, {device_id: key})
    verdicts = []
    for round_number in range(rounds):
        body = signed_upload(device_id, key, 10_001 + round_number)
        verdicts.append(await race(stack.urls, body, copies_per_process=8))
        # the accepted envelope again, once to every process: a replay wherever it lands
        verdicts.append(await race(stack.urls, body, copies_per_process=1))
        await asyncio.sleep(pause)
    return verdicts


# --- reading what the cloud stored -----------------------------------------------------------------


async def stored(url: str, device_ids: list[str]) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each device's uploads and packets, as the read API lists them."""
    async with aiohttp.ClientSession() as http:

        async def listing(device_id: str, what: str) -> list[dict[str, Any]]:
            async with http.get(f"{url}/api/v1/devices/{device_id}/{what}", params={"limit": "10000"}) as reply:
                assert reply.status == 200, await reply.text()
                rows: list[dict[str, Any]] = (await reply.json())[what]
                return rows

        return {d: (await listing(d, "uploads"), await listing(d, "packets")) for d in device_ids}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def check_exactly_once(ledger: list[dict[str, Any]], found: dict[str, Any]) -> None:
    """Every acknowledged upload stored once as accepted, its packets once each."""
    for device_id, (uploads, packets) in found.items():
        mine = [line for line in ledger if line["device_id"] == device_id]
        acknowledged = {line["nonce"] for line in mine if line["status"] == 200}
        answered_otherwise = {line["nonce"] for line in mine if line["status"] != 200}
        accepted = [u["nonce"] for u in uploads if u["verdict"] == "accepted"]
        assert len(accepted) == len(set(accepted)), f"{device_id}: an upload stored twice"
        assert acknowledged <= set(accepted), f"{device_id}: acknowledged but not stored: {acknowledged - set(accepted)}"
        # accepted without a 200 only when the board never heard the answer (and sent it again)
        assert set(accepted) - acknowledged <= answered_otherwise
        keys = [(p["boot_id"], p["packet_ts"]) for p in packets]
        assert len(keys) == len(set(keys)), f"{device_id}: a packet stored twice"
        sent = {ts for line in mine if line["status"] == 200 for ts in line["packets"]}
        assert sent <= {p["packet_ts"] for p in packets}, f"{device_id}: an acknowledged packet is missing"


def check_locust_csv(prefix: Path) -> list[dict[str, str]]:
    """Locust's statistics: the boards' traffic happened and no HTTP exchange failed."""
    stats = read_csv(prefix.with_name(prefix.name + "_stats.csv"))
    failures = read_csv(prefix.with_name(prefix.name + "_failures.csv"))
    http_failures = [f for f in failures if f["Method"] != "DEADLINE"]
    assert not http_failures, http_failures
    by_name = {row["Name"]: row for row in stats if row["Type"] != "DEADLINE"}
    for name in HTTP_NAMES:
        assert int(by_name[name]["Request Count"]) > 0, f"no {name} requests"
        assert by_name[name]["Failure Count"] == "0"
    return stats


def run_fleet(stack: Stack, tmp: Path, *, devices: int, seconds: float, scale: float, prefix: str,
              races: int) -> tuple[subprocess.CompletedProcess[bytes], list[dict[str, Any]], list[Counter[Any]]]:
    """Run `ecowatt fleet load` headless on two local workers while racing duplicates from here."""
    ledger = tmp / "ledger.jsonl"
    command = fleet_command() + [
        "--devices", str(devices), "--cloud", ",".join(stack.urls), "--workers", "2", "--headless",
        "--run-time", f"{seconds:g}", "--time-scale", f"{scale:g}", "--spawn-rate", str(devices),
        "--csv", str(tmp / "fleet"), "--ledger", str(ledger), "--db", stack.dsn, "--id-prefix", prefix,
    ]
    with (tmp / "fleet.log").open("wb") as log:
        load = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            verdicts = asyncio.run(duplicate_races(stack, f"{prefix}dup", races, pause=seconds / (races + 1)))
            returncode = load.wait(timeout=seconds + 90)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
    output = (tmp / "fleet.log").read_bytes()
    lines = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
    return subprocess.CompletedProcess(command, returncode, output), lines, verdicts


def check_races(verdicts: list[Counter[Any]]) -> None:
    for counts in verdicts:
        answers = sum(counts.values())
        statuses = Counter(status for status, _ in counts.elements())
        assert not [s for s in statuses if s >= 500], counts
        refused = {code for (status, code) in counts if status == 401}
        assert refused <= {"replay", "resend"}, counts
        if answers > CLOUD_PROCESSES:  # a race of fresh copies: one stored, every other copy refused
            assert counts[(200, "accepted")] == 1 and statuses[401] == answers - 1, counts
        else:  # the accepted envelope once more on every process
            assert statuses == {401: CLOUD_PROCESSES}, counts


def check_fleet_run(stack: Stack, tmp: Path, devices: int, prefix: str, result: subprocess.CompletedProcess[bytes],
                    ledger: list[dict[str, Any]], verdicts: list[Counter[Any]], races: int) -> None:
    log = result.stdout.decode(errors="replace")
    # Locust exits 1 when anything failed; missed timer deadlines (a loaded machine) are reported, not HTTP
    assert result.returncode in (0, 1), log[-3000:]
    check_locust_csv(tmp / "fleet")
    check_races(verdicts)
    device_ids = [f"{prefix}{i:04d}" for i in range(devices)]
    assert {line["device_id"] for line in ledger} == set(device_ids), "every board uploaded"
    found = asyncio.run(stored(stack.urls[-1], [*device_ids, f"{prefix}dup"]))
    dup_uploads, dup_packets = found.pop(f"{prefix}dup")
    check_exactly_once(ledger, found)
    assert sorted(u["nonce"] for u in dup_uploads if u["verdict"] == "accepted") == [10_001 + r for r in range(races)]
    assert len(dup_packets) == races
    for process in stack.processes:
        assert process.poll() is None, "a cloud process died under load"


def test_cloud_processes_on_one_postgresql_keep_every_guarantee_under_a_locust_fleet(
    stack: Stack, tmp_path: Path
) -> None:
    devices, races, prefix = 30, 3, "scale-"
    result, ledger, verdicts = run_fleet(stack, tmp_path, devices=devices, seconds=10, scale=8, prefix=prefix,
                                         races=races)
    check_fleet_run(stack, tmp_path, devices, prefix, result, ledger, verdicts, races)
    acknowledged = [line for line in ledger if line["status"] == 200]
    # 80 device seconds: a first upload after 15-30 s, then one every 15 s
    assert len(acknowledged) >= devices * 2, "boards upload at firmware cadence, scaled 8x"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_fleet_load_runs_as_a_master_with_a_worker_started_separately(stack: Stack, tmp_path: Path) -> None:
    port = _free_port()
    common = ["--time-scale", "10"]
    master = subprocess.Popen(
        fleet_command() + ["--devices", "4", "--cloud", stack.urls[0], "--master", "--workers", "1",
                           "--master-port", str(port), "--headless", "--run-time", "4", "--spawn-rate", "4",
                           "--csv", str(tmp_path / "fleet"), "--db", stack.dsn, "--id-prefix", "distributed-",
                           *common],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    # the worker knows nothing of the fleet: devices, clouds and ids come from the master
    worker = subprocess.Popen(
        fleet_command() + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port), *common],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        master_out, _ = master.communicate(timeout=90)
        worker_out, _ = worker.communicate(timeout=30)
    finally:
        for process in (master, worker):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert master.returncode in (0, 1), master_out.decode(errors="replace")[-3000:]
    assert worker.returncode in (0, 1), worker_out.decode(errors="replace")[-3000:]
    stats = check_locust_csv(tmp_path / "fleet")
    uploads = next(row for row in stats if row["Name"] == "/process")
    assert int(uploads["Request Count"]) >= 1  # the separately started worker ran boards that uploaded
    found = asyncio.run(stored(stack.urls[0], [f"distributed-{i:04d}" for i in range(4)]))
    assert all(any(u["verdict"] == "accepted" for u in uploads) for uploads, _ in found.values())


@pytest.mark.slow
def test_a_larger_fleet_for_a_minute(stack: Stack, tmp_path: Path) -> None:
    devices, races, prefix = 60, 10, "soak-"
    result, ledger, verdicts = run_fleet(stack, tmp_path, devices=devices, seconds=60, scale=5, prefix=prefix,
                                         races=races)
    check_fleet_run(stack, tmp_path, devices, prefix, result, ledger, verdicts, races)
    per_device: defaultdict[str, int] = defaultdict(int)
    for line in ledger:
        per_device[line["device_id"]] += line["status"] == 200
    # 300 device seconds: ~18 upload periods; a loaded machine makes boards miss some of them
    assert min(per_device.values()) >= 10, "every board kept uploading for the whole run"
