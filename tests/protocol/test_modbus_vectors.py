"""protocol.modbus against every record of fixtures/vectors/modbus_frames.json (the real firmware's bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol import modbus
from protocol.errors import FrameError
from protocol.registers import SLAVE_ADDRESS

VECTORS = json.loads((Path(__file__).parents[2] / "fixtures/vectors/modbus_frames.json").read_text())
PAIRS = VECTORS["pairs"]


def _pairs(predicate):
    chosen = [p for p in PAIRS if predicate(p)]
    assert chosen, "the vector file no longer has records of this kind"
    return pytest.mark.parametrize("pair", chosen, ids=[p["name"] for p in chosen])


def test_vector_slave_address_is_the_register_maps() -> None:
    assert int(VECTORS["slave_address"], 16) == SLAVE_ADDRESS


@_pairs(lambda p: p["request_hex"])
def test_request_crc_and_http_body(pair: dict) -> None:
    frame = modbus.from_hex(pair["request_hex"])
    assert modbus.crc_ok(frame) is pair["request_crc_ok"]
    computed = modbus.to_hex(modbus.crc16(frame[:-2]).to_bytes(2, "little"))
    assert computed == pair["request_crc_field"]["computed_lo_hi"]
    assert modbus.http_body(pair["request_hex"]) == pair["request_http_body"]
    assert modbus.frame_from_http_body(pair["request_http_body"]) == pair["request_hex"]


@_pairs(lambda p: p["request_hex"] and p["request_crc_ok"])
def test_valid_requests_parse_and_rebuild_byte_exact(pair: dict) -> None:
    frame = modbus.from_hex(pair["request_hex"])
    request = modbus.parse_request(frame)
    assert isinstance(request, modbus.ReadRequest | modbus.WriteRequest)
    assert request.encode() == frame
    assert modbus.to_hex(request.encode()) == pair["request_hex"]
    if pair["kind"] == "read":
        assert (request.start, request.count) == (pair["block_start"], pair["block_count"])


@_pairs(lambda p: p["request_hex"] and not p["request_crc_ok"])
def test_doc_erratum_request_is_refused(pair: dict) -> None:
    with pytest.raises(FrameError):
        modbus.parse_request(modbus.from_hex(pair["request_hex"]))


@_pairs(lambda p: p["response_hex"] is not None)
def test_firmware_classification(pair: dict) -> None:
    assert modbus.classify_response(pair["response_hex"]).name == pair["device_frame_verdict"]
    body = pair["response_http_body"]
    assert body == modbus.http_body(pair["response_hex"])
    assert modbus.classify_response(modbus.frame_from_http_body(body)).name == pair["device_frame_verdict"]


@_pairs(lambda p: p.get("response_crc_field"))
def test_response_crc_field(pair: dict) -> None:
    frame = modbus.from_hex(pair["response_hex"])
    field = pair["response_crc_field"]
    received = field["received_lo_hi"].upper()  # quoted from the response text, whatever its case
    assert modbus.to_hex(frame[-2:]) == received
    assert modbus.to_hex(modbus.crc16(frame[:-2]).to_bytes(2, "little")) == field["computed_lo_hi"]
    assert modbus.crc_ok(frame) is (received == field["computed_lo_hi"])


@_pairs(lambda p: p["kind"] == "read" and p["device_decoded_values"])
def test_firmware_decoding_of_reads(pair: dict) -> None:
    selection = pair["read_selection"]
    start, count = modbus.read_block(selection)
    assert (start, count) == (pair["block_start"], pair["block_count"])
    slave = modbus.from_hex(pair["request_hex"])[0]  # the PIO test vectors use slave 1
    assert modbus.to_hex(modbus.build_read_request(slave, start, count)) == pair["request_hex"]
    block = modbus.decode_read_response(modbus.from_hex(pair["response_hex"]), count)
    assert modbus.pick_selection(block, start, selection) == pair["device_decoded_values"]


@_pairs(lambda p: p["kind"] == "read" and p["device_decoded_values"] == [])
def test_firmware_drops_wrong_function_or_byte_count(pair: dict) -> None:
    frame = modbus.from_hex(pair["response_hex"])
    assert modbus.classify_response(pair["response_hex"]) is modbus.Verdict.PARSE_OK
    with pytest.raises(FrameError):
        modbus.decode_read_response(frame, pair["block_count"])


def test_firmware_accepts_a_response_from_another_slave() -> None:
    (pair,) = [p for p in PAIRS if p["name"] == "accepted_wrong_slave_valid_crc"]
    frame = modbus.from_hex(pair["response_hex"])
    assert frame[0] != SLAVE_ADDRESS
    assert list(modbus.decode_read_response(frame, 2)) == pair["device_decoded_values"]


@_pairs(lambda p: p["kind"] == "read" and p["device_frame_verdict"] == "PARSE_OK" and p["device_decoded_values"])
def test_strict_parse_of_read_responses(pair: dict) -> None:
    frame = modbus.from_hex(pair["response_hex"])
    response = modbus.parse_read_response(frame)
    assert response.encode() == frame
    request = modbus.parse_request(modbus.from_hex(pair["request_hex"]))
    assert len(response.values) == request.count


@_pairs(lambda p: p["kind"] == "write")
def test_write_echo(pair: dict) -> None:
    request, response = pair["request_hex"], pair["response_hex"]
    assert modbus.from_hex(response) == modbus.from_hex(request)
    echoed = modbus.parse_response(modbus.from_hex(response))
    assert echoed == modbus.parse_request(modbus.from_hex(request))
    # The firmware's success test is a case-sensitive string compare of the echo.
    firmware_accepts = response == request
    assert firmware_accepts is (pair["device_action"] == "accept")


@_pairs(lambda p: p["response_hex"] and p["device_frame_verdict"] == "PARSE_EXCEPTION" and p["kind"] != "fault")
def test_exception_frames_build_and_parse(pair: dict) -> None:
    frame = modbus.from_hex(pair["response_hex"])
    response = modbus.parse_response(frame)
    assert isinstance(response, modbus.ExceptionResponse)
    assert modbus.build_exception(response.slave, response.function, response.code) == frame
    assert response.code in set(modbus.ExceptionCode)
    if pair["request_hex"]:
        request = modbus.from_hex(pair["request_hex"])
        assert (response.slave, response.function) == (request[0], request[1])
    with pytest.raises(FrameError):
        modbus.parse_read_response(frame)


def test_every_documented_exception_code_has_a_vector() -> None:
    codes = {
        modbus.parse_response(modbus.from_hex(p["response_hex"])).code
        for p in PAIRS
        if p["name"].startswith("exception_read_code_")
    }
    assert codes == set(modbus.ExceptionCode)


@_pairs(lambda p: p["kind"] == "fault" and p["device_frame_verdict"] != "PARSE_OK")
def test_fault_shapes_fail_strict_parsing(pair: dict) -> None:
    with pytest.raises(FrameError):
        modbus.parse_read_response(modbus.from_hex(pair["response_hex"]))
