"""The SIM's HTTP frame API over real HTTP on loopback, against the firmware's vectors."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import modbus
from protocol.modbus import Verdict
from protocol.registers import REGISTERS
from sim_inverter.clock import SimClock
from sim_inverter.model import InverterModel
from sim_inverter.service import SimConfig, SimService

PAIRS = {
    p["name"]: p
    for p in json.loads((Path(__file__).parents[2] / "fixtures/vectors/modbus_frames.json").read_text())["pairs"]
}
NOON = 6 * 3600.0  # sim t=0 is 06:00 local: the sun is up
KEY = "team-key-0123456789"


def frozen_clock(t: float = NOON) -> SimClock:
    return SimClock(offset=t, loop_time=lambda: 0.0)


@pytest.fixture(scope="module")
def shared_model() -> InverterModel:
    """Building a model's day tables takes a while; tests share one and reset its one writable state."""
    return InverterModel(seed=3)


@pytest.fixture
def model(shared_model: InverterModel) -> InverterModel:
    shared_model.set_export_limit(100)
    return shared_model


@pytest.fixture
async def sim(model):
    config = SimConfig(http_port=0, modbus_port=None)
    async with SimService(config, model=model, clock=frozen_clock()) as service:
        yield service


@pytest.fixture
async def keyed_sim(model):
    config = SimConfig(http_port=0, modbus_port=None, api_key=KEY)
    async with SimService(config, model=model, clock=frozen_clock()) as service:
        yield service


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post_frame(http, sim, path: str, frame_hex: str, key: str | None = None) -> tuple[int, str]:
    """POST exactly the bytes the firmware sends; (status, body text)."""
    headers = {"Content-Type": "application/json", "accept": "*/*"}
    if key is not None:
        headers["Authorization"] = key
    async with http.post(f"{sim.http_url}{path}", data=modbus.http_body(frame_hex), headers=headers) as reply:
        return reply.status, await reply.text()


async def read_frame(http, sim, frame_hex: str, key: str | None = None) -> str:
    status, text = await post_frame(http, sim, "/api/inverter/read", frame_hex, key)
    assert status == 200
    return modbus.frame_from_http_body(text)


async def registers(http, sim, key: str | None = None) -> list[int]:
    headers = {"Authorization": key} if key else {}
    async with http.get(f"{sim.http_url}/api/inverter/registers", headers=headers) as reply:
        assert reply.status == 200
        return [row["raw"] for row in (await reply.json())["registers"]]


async def arm(http, sim, fault: dict, key: str | None = None) -> aiohttp.ClientResponse:
    headers = {"Authorization": key} if key else {}
    async with http.post(f"{sim.http_url}/api/user/error-flag/add", json=fault, headers=headers) as reply:
        await reply.read()
        return reply


async def ledger(http, sim, since: int = 0) -> list[dict]:
    async with http.get(f"{sim.http_url}/api/inverter/ledger", params={"since": since}) as reply:
        assert reply.status == 200
        return (await reply.json())["entries"]


# --- reads and writes ----------------------------------------------------------------------------------


async def test_firmware_poll_gets_the_live_registers(sim, http) -> None:
    pair = PAIRS["fw_read_default_selection"]
    frame_hex = await read_frame(http, sim, pair["request_hex"])
    assert modbus.classify_response(frame_hex) is Verdict.PARSE_OK
    assert frame_hex == frame_hex.upper()
    values = modbus.decode_read_response(modbus.from_hex(frame_hex), pair["block_count"])
    assert list(values) == sim.model.registers(NOON) == await registers(http, sim)
    assert values[4] > 0 and values[9] > 0  # noon: the strings and the inverter are producing
    picked = modbus.pick_selection(values, 0, pair["read_selection"])
    assert len(picked) == 6


@pytest.mark.parametrize("name", ["doc_read_api_example", "fw_read_single_pac", "fw_read_gap_selection"])
async def test_partial_reads(sim, http, name: str) -> None:
    pair = PAIRS[name]
    frame = modbus.from_hex(await read_frame(http, sim, pair["request_hex"]))
    start, count = pair["block_start"], pair["block_count"]
    assert list(modbus.parse_read_response(frame).values) == sim.model.registers(NOON)[start : start + count]


@pytest.mark.parametrize(
    "name", ["doc_write_api_example", "fw_write_export_pct_0", "fw_write_export_pct_50", "fw_write_export_pct_100"]
)
async def test_writes_echo_and_set_the_export_limit(sim, http, name: str) -> None:
    pair = PAIRS[name]
    status, text = await post_frame(http, sim, "/api/inverter/write", pair["request_hex"])
    assert status == 200
    assert text == pair["response_http_body"]  # byte-identical echo: the firmware's strcmp passes
    value = modbus.parse_request(modbus.from_hex(pair["request_hex"])).value
    assert (await registers(http, sim))[8] == value == sim.model.export_limit


async def test_lowercase_write_is_echoed_in_uppercase(sim, http) -> None:
    status, text = await post_frame(http, sim, "/api/inverter/write", "11060008003c0a89")
    assert (status, modbus.frame_from_http_body(text)) == (200, "11060008003C0A89")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/inverter/write", "write_value_out_of_range_suggested_exception"),
        ("/api/inverter/write", "write_readonly_register_suggested_exception"),
    ],
)
async def test_refused_writes_get_the_vector_exception_frames(sim, http, path: str, name: str) -> None:
    pair = PAIRS[name]
    status, text = await post_frame(http, sim, path, pair["request_hex"])
    assert (status, text) == (200, pair["response_http_body"])
    assert sim.model.export_limit == 100


@pytest.mark.parametrize(
    ("path", "request_hex", "response_hex"),
    [
        # The doc's corrected example reads 0x6B..0x6C: no such registers -> exception 02.
        ("/api/inverter/read", PAIRS["doc_example_read_request_corrected"]["request_hex"], "118302C134"),
        ("/api/inverter/read", modbus.to_hex(modbus.build_read_request(0x11, 8, 3)), "118302C134"),
        # Counts outside 1..125 cannot be built; sent raw they get exception 03.
        ("/api/inverter/read", modbus.to_hex(modbus.append_crc(bytes.fromhex("11030000007E"))), "11830300F4"),
        ("/api/inverter/read", modbus.to_hex(modbus.append_crc(bytes.fromhex("110300000000"))), "11830300F4"),
        # A write frame on the read endpoint, and an unimplemented function code -> exception 01.
        ("/api/inverter/read", "1106000800328B4D", modbus.to_hex(modbus.build_exception(0x11, 6, 1))),
        ("/api/inverter/write", "11030000000AC75D", modbus.to_hex(modbus.build_exception(0x11, 3, 1))),
        ("/api/inverter/read", modbus.to_hex(modbus.append_crc(bytes.fromhex("1101000000010000"))),
         modbus.to_hex(modbus.build_exception(0x11, 1, 1))),
        # Another slave: the gateway's target does not answer -> exception 0B.
        ("/api/inverter/read", "010300000002C40B", modbus.to_hex(modbus.build_exception(0x01, 3, 0x0B))),
    ],
)
async def test_valid_frames_with_bad_content_get_exception_frames(
    sim, http, path: str, request_hex: str, response_hex: str
) -> None:
    status, text = await post_frame(http, sim, path, request_hex)
    assert status == 200
    assert modbus.frame_from_http_body(text) == response_hex
    assert modbus.classify_response(response_hex) is Verdict.PARSE_EXCEPTION


@pytest.mark.parametrize(
    "body",
    [
        modbus.http_body(PAIRS["doc_example_read_request_verbatim"]["request_hex"]),  # the doc's wrong CRC
        modbus.http_body("110300000002C69"),  # odd
        modbus.http_body("11030000000G C69B"),
        modbus.http_body(""),
        modbus.http_body("1103000000"),  # too short after hex decoding
        modbus.http_body("11030000000200C69B"),  # a byte too many
        modbus.http_body("118302C134"),  # an exception frame is not a request
        modbus.http_body("228302313B"),  # nor one from another slave
        '{"frame": 110300000002}',
        '{"frames": "110300000002C69B"}',
        "110300000002C69B",
        "[]",
        "",
        "\xff\xfe",
    ],
)
async def test_unparsable_requests_get_a_blank_body(sim, http, body: str) -> None:
    async with http.post(f"{sim.http_url}/api/inverter/read", data=body.encode("latin-1")) as reply:
        assert reply.status == 400
        assert await reply.read() == b""
    assert await ledger(http, sim) == []


async def test_oversized_body_is_413(sim, http) -> None:
    async with http.post(f"{sim.http_url}/api/inverter/read", data=b" " * (64 * 1024 + 1)) as reply:
        assert reply.status == 413


# --- authorization --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "wrong", KEY[:-1], KEY.upper(), "Bearer " + KEY])
async def test_wrong_or_missing_key_is_401_with_empty_body(keyed_sim, http, key: str | None) -> None:
    status, text = await post_frame(http, keyed_sim, "/api/inverter/read", "11030000000AC75D", key)
    assert (status, text) == (401, "")
    status, text = await post_frame(http, keyed_sim, "/api/inverter/write", "1106000800328B4D", key)
    assert (status, text) == (401, "")
    assert keyed_sim.model.export_limit == 100
    assert (await arm(http, keyed_sim, {"errorType": "CRC_ERROR"}, key)).status == 401


async def test_right_key_is_served(keyed_sim, http) -> None:
    frame_hex = await read_frame(http, keyed_sim, "11030000000AC75D", KEY)
    assert modbus.classify_response(frame_hex) is Verdict.PARSE_OK


async def test_without_a_configured_key_any_key_is_accepted(sim, http) -> None:
    for key in (None, "anything", KEY):
        assert modbus.classify_response(await read_frame(http, sim, "11030000000AC75D", key)) is Verdict.PARSE_OK


# --- one-shot error flags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "verdict"),
    [
        ({"errorType": "EXCEPTION", "exceptionCode": 4}, Verdict.PARSE_EXCEPTION),
        ({"errorType": "CRC_ERROR"}, Verdict.PARSE_CRC_ERROR),
        ({"errorType": "DELAY", "delayMs": 50}, Verdict.PARSE_OK),
    ],
)
async def test_error_flag_spoils_exactly_the_next_call(keyed_sim, http, fault: dict, verdict: Verdict) -> None:
    reply = await arm(http, keyed_sim, fault, KEY)
    assert reply.status == 200
    first = await read_frame(http, keyed_sim, "110300000002C69B", KEY)
    assert modbus.classify_response(first) is verdict
    second = await read_frame(http, keyed_sim, "110300000002C69B", KEY)
    assert modbus.classify_response(second) is Verdict.PARSE_OK
    outcomes = [e["outcome"] for e in await ledger_with_key(http, keyed_sim)]
    assert outcomes == [fault["errorType"].lower(), "ok"]


async def ledger_with_key(http, sim) -> list[dict]:
    async with http.get(f"{sim.http_url}/api/inverter/ledger", headers={"Authorization": KEY}) as reply:
        return (await reply.json())["entries"]


async def test_exception_flag_gives_the_vector_frame(sim, http) -> None:
    await arm(http, sim, {"errorType": "EXCEPTION", "exceptionCode": 4})
    assert await read_frame(http, sim, "110300000002C69B") == PAIRS["exception_read_code_04"]["response_hex"]
    await arm(http, sim, {"errorType": "EXCEPTION", "exceptionCode": 4})
    status, text = await post_frame(http, sim, "/api/inverter/write", "1106000800328B4D")
    assert text == PAIRS["exception_write_code_04"]["response_http_body"]
    assert sim.model.export_limit == 100  # an injected exception means the write did not happen


async def test_corrupt_flag_fails_validation(sim, http) -> None:
    for _ in range(6):
        await arm(http, sim, {"errorType": "CORRUPT"})
        verdict = modbus.classify_response(await read_frame(http, sim, "11030000000AC75D"))
        assert verdict is not Verdict.PARSE_OK


async def test_packet_drop_closes_the_connection_and_write_is_lost(sim, http) -> None:
    await arm(http, sim, {"errorType": "PACKET_DROP"})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_frame(http, sim, "/api/inverter/write", "1106000800328B4D")
    assert sim.model.export_limit == 100
    status, text = await post_frame(http, sim, "/api/inverter/write", "1106000800328B4D")
    assert (status, text) == (200, modbus.http_body("1106000800328B4D"))
    assert [e["outcome"] for e in await ledger(http, sim)] == ["packet_drop", "ok"]


async def test_flags_belong_to_the_key_that_armed_them_and_queue_up(sim, http) -> None:
    await arm(http, sim, {"errorType": "CRC_ERROR"}, "team-a")
    await arm(http, sim, {"errorType": "EXCEPTION", "exceptionCode": 6}, "team-a")
    async with http.get(f"{sim.http_url}/api/user/error-flag", headers={"Authorization": "team-a"}) as reply:
        assert [f["errorType"] for f in (await reply.json())["pending"]] == ["CRC_ERROR", "EXCEPTION"]
    assert modbus.classify_response(await read_frame(http, sim, "110300000002C69B", "team-b")) is Verdict.PARSE_OK
    verdicts = [
        modbus.classify_response(await read_frame(http, sim, "110300000002C69B", "team-a")) for _ in range(3)
    ]
    assert verdicts == [Verdict.PARSE_CRC_ERROR, Verdict.PARSE_EXCEPTION, Verdict.PARSE_OK]


@pytest.mark.parametrize(
    "body",
    [{}, {"errorType": "EXCEPTION"}, {"errorType": "DELAY"}, {"errorType": "NOPE"}, "not json", [1, 2]],
)
async def test_bad_error_flag_is_400_json(sim, http, body: object) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    async with http.post(f"{sim.http_url}/api/user/error-flag/add", data=data) as reply:
        assert reply.status == 400
        assert (await reply.json())["error"]


# --- error emulation --------------------------------------------------------------------------------------


async def emulate(http, sim, body: dict) -> aiohttp.ClientResponse:
    async with http.post(f"{sim.http_url}/api/inverter/error", json=body) as reply:
        reply.body_text = await reply.text()  # type: ignore[attr-defined]
        return reply


async def test_error_emulation_doc_example(keyed_sim, http) -> None:
    pair = PAIRS["doc_error_emulation_example"]
    body = {"slaveAddress": 1, "functionCode": 1, "errorType": "EXCEPTION", "exceptionCode": 1}
    reply = await emulate(http, keyed_sim, body)  # no Authorization needed, even with a key configured
    assert (reply.status, reply.body_text) == (200, pair["response_http_body"])


@pytest.mark.parametrize(
    ("body", "verdict"),
    [
        ({"slaveId": 17, "functionCode": 3, "errorType": "CRC_ERROR"}, Verdict.PARSE_CRC_ERROR),
        ({"slaveAddress": 17, "functionCode": 3, "errorType": "DELAY", "delayMs": 20}, Verdict.PARSE_OK),
        ({"slaveAddress": 17, "functionCode": 6, "errorType": "DELAY", "delayMs": 0}, Verdict.PARSE_OK),
    ],
)
async def test_error_emulation_frames(sim, http, body: dict, verdict: Verdict) -> None:
    reply = await emulate(http, sim, body)
    assert reply.status == 200
    assert modbus.classify_response(modbus.frame_from_http_body(reply.body_text)) is verdict


async def test_error_emulation_curl_booleans(sim, http) -> None:
    for _ in range(4):
        reply = await emulate(http, sim, {"slaveId": 17, "functionCode": 3, "corruptPacket": True})
        verdict = modbus.classify_response(modbus.frame_from_http_body(reply.body_text))
        assert verdict is not Verdict.PARSE_OK
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await emulate(http, sim, {"slaveId": 17, "functionCode": 3, "dropPacket": True})
    assert await ledger(http, sim) == []  # emulation is not a served read


async def test_error_emulation_bad_fields(sim, http) -> None:
    reply = await emulate(http, sim, {"slaveAddress": 1, "functionCode": 1, "errorType": "EXCEPTION"})
    assert reply.status == 400
    assert json.loads(reply.body_text)["frame"] == ""


# --- fault profiles -----------------------------------------------------------------------------------------

PROFILE = {"probabilities": {"CRC_ERROR": 0.3, "EXCEPTION": 0.2, "CORRUPT": 0.1}, "seed": 11, "exceptionCode": 6}


async def run_profile(model: InverterModel, profile: dict, n: int = 40) -> list[str]:
    config = SimConfig(http_port=0, modbus_port=None)
    async with SimService(config, model=model, clock=frozen_clock()) as sim, aiohttp.ClientSession() as http:
        async with http.post(f"{sim.http_url}/api/inverter/fault-profile", json=profile) as reply:
            assert reply.status == 200
        for _ in range(n):
            await read_frame(http, sim, "11030000000AC75D")
        return [e["outcome"] for e in await ledger(http, sim)]


async def test_fault_profile_is_reproducible_and_seeded(model) -> None:
    first, second = await run_profile(model, PROFILE), await run_profile(model, PROFILE)
    assert first == second
    assert {"crc_error", "exception", "corrupt", "ok"} <= set(first)
    assert await run_profile(model, {**PROFILE, "seed": 12}) != first


async def test_fault_profile_get_and_delete(sim, http) -> None:
    url = f"{sim.http_url}/api/inverter/fault-profile"
    async with http.get(url) as reply:
        assert await reply.json() == {"profile": None}
    async with http.post(url, json={"probabilities": {"EXCEPTION": 1.0}, "seed": 5}) as reply:
        assert (await reply.json())["profile"]["seed"] == 5
    async with http.get(url) as reply:
        assert (await reply.json())["profile"]["probabilities"] == {"EXCEPTION": 1.0}
    assert modbus.classify_response(await read_frame(http, sim, "110300000002C69B")) is Verdict.PARSE_EXCEPTION
    async with http.delete(url) as reply:
        assert reply.status == 200
    assert modbus.classify_response(await read_frame(http, sim, "110300000002C69B")) is Verdict.PARSE_OK
    async with http.post(url, json={"probabilities": {"EXCEPTION": 1.5}}) as reply:
        assert reply.status == 400


# --- read-outs -------------------------------------------------------------------------------------------------


async def test_registers_endpoint_names_units_and_scaling(sim, http) -> None:
    async with http.get(f"{sim.http_url}/api/inverter/registers") as reply:
        doc = await reply.json()
    assert doc["t"] == NOON and doc["slave"] == 0x11
    assert [r["name"] for r in doc["registers"]] == [r.name for r in REGISTERS]
    for row, reg in zip(doc["registers"], REGISTERS, strict=True):
        assert row["unit"] == reg.unit and row["writable"] == reg.writable
        assert row["value"] == pytest.approx(row["raw"] / reg.gain)


async def test_ledger_pages_with_since(sim, http) -> None:
    for _ in range(5):
        await read_frame(http, sim, "110300000002C69B")
    served = sim.model.registers(NOON)[:2]
    await post_frame(http, sim, "/api/inverter/write", "1106000800328B4D")
    entries = await ledger(http, sim)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0]["values"] == served
    assert entries[0]["transport"] == "http" and entries[0]["t"] == NOON
    assert entries[-1] | {"seq": 0} == {
        "seq": 0, "t": NOON, "transport": "http", "operation": "write", "slave": 17, "start": 8, "count": 1,
        "values": [50], "outcome": "ok", "exception_code": None,
    }
    assert [e["seq"] for e in await ledger(http, sim, since=4)] == [5, 6]
    async with http.get(f"{sim.http_url}/api/inverter/ledger", params={"since": 1, "limit": 2}) as reply:
        assert [e["seq"] for e in (await reply.json())["entries"]] == [2, 3]
    for bad in ("-1", "x", "1.5", "٣"):
        async with http.get(f"{sim.http_url}/api/inverter/ledger", params={"since": bad}) as reply:
            assert reply.status == 400


# --- nothing ever gets a 500 -----------------------------------------------------------------------------------

ROUTES = [
    ("POST", "/api/inverter/read"),
    ("POST", "/api/inverter/write"),
    ("POST", "/api/user/error-flag/add"),
    ("POST", "/api/inverter/error"),
    ("POST", "/api/inverter/fault-profile"),
    ("GET", "/api/inverter/ledger"),
]
# Integers that are valid delays stay tiny, so no example sleeps for long.
small_or_invalid_ints = st.integers(-3, 3) | st.integers(min_value=600_001) | st.integers(max_value=-4)
json_values = st.recursive(
    st.none() | st.booleans() | small_or_invalid_ints | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=15), inner, max_size=4),
    max_leaves=10,
)
# Frames with a valid CRC, often addressed to our slave, so parsing gets past the first checks.
frames = st.tuples(st.sampled_from([b"\x11", b""]), st.binary(max_size=10)).map(
    lambda parts: modbus.to_hex(modbus.append_crc(parts[0] + parts[1]))
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"frame": frames | st.text(max_size=30) | json_values}).map(
        lambda d: json.dumps(d).encode()
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "errorType": st.sampled_from(["EXCEPTION", "CRC_ERROR", "CORRUPT", "PACKET_DROP", "DELAY"]),
            "exceptionCode": st.integers(-1, 12) | json_values,
            "delayMs": st.integers(0, 3) | json_values,
            "slaveId": st.integers(-1, 300) | json_values,
            "functionCode": st.integers(-1, 300),
            "corruptPacket": st.booleans(),
            "probabilities": st.dictionaries(st.sampled_from(["EXCEPTION", "DELAY"]), st.floats(0, 0.5)),
        },
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(route=st.sampled_from(ROUTES), body=bodies, since=st.text(max_size=6))
async def test_no_input_gets_a_500(sim, http, route: tuple[str, str], body: bytes, since: str) -> None:
    method, path = route
    try:
        async with http.request(method, f"{sim.http_url}{path}", data=body, params={"since": since}) as reply:
            assert reply.status in (200, 400, 413), (reply.status, await reply.text())
            body = await reply.read()
            if path in ("/api/inverter/read", "/api/inverter/write") and reply.status != 413:
                # The frame API answers a frame or a blank body, nothing else.
                assert body == b"" or modbus.classify_response(modbus.frame_from_http_body(body)) in (
                    Verdict.PARSE_OK, Verdict.PARSE_EXCEPTION
                ), body
    except aiohttp.ServerDisconnectedError:
        pass  # a PACKET_DROP asked for (or drawn from a profile): the connection closes on purpose
    sim.faults.set_profile(None)  # the server outlives the example: leave no fault behind
    sim.faults.disarm("")


async def test_sim_time_beyond_the_model_is_a_device_failure_not_a_500(model, http) -> None:
    config = SimConfig(http_port=0, modbus_port=None)
    async with SimService(config, model=model, clock=frozen_clock(1e12)) as sim:
        assert await read_frame(http, sim, "110300000002C69B") == PAIRS["exception_read_code_04"]["response_hex"]
        async with http.get(f"{sim.http_url}/api/inverter/registers") as reply:
            assert reply.status == 400
            assert "sim time" in (await reply.json())["error"]
