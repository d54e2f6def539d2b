"""FOTA messages against the reference server's recorded answers, plus our manifest extensions."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import DocumentError, EcoWattError, FirmwareError
from protocol.firmware_crypto import generate_rsa_key, load_private_key_pem, load_public_key_pem
from protocol.json_wire import dumps
from protocol.ota_messages import (
    UpdateOffer,
    check_reply,
    check_security_counter,
    chunk_of,
    chunk_reply,
    error_reply,
    initiate_reply,
    initiate_request,
    parse_check_reply,
    parse_chunk_reply,
    parse_complete_request,
    parse_initiate_reply,
    parse_initiate_request,
    parse_manifest,
    parse_version,
    session_id,
    sign_manifest,
    verify_manifest,
)

CASE = json.loads((Path(__file__).parents[2] / "fixtures/vectors/fota_case.json").read_text())
SERVER: dict[str, Any] = CASE["reference_server"]
DEVICE = "ESP32_EcoWatt_Smart"
MANIFEST = parse_manifest(json.dumps(CASE["manifest_file"]))
ENCRYPTED = base64.b64decode(CASE["encrypted_b64"])
PRIVATE = load_private_key_pem(CASE["rsa_private_key_pem"])
PUBLIC = load_public_key_pem(CASE["rsa_public_key_pem"])


def test_the_reference_manifest_parses_writes_back_and_is_consistent() -> None:
    assert MANIFEST.to_dict() == CASE["manifest_file"]
    assert list(json.loads(MANIFEST.to_json())) == list(CASE["manifest_file"])  # reference key order
    MANIFEST.check_consistency()
    assert len(MANIFEST.iv_bytes()) == 16 and len(MANIFEST.signature_bytes()) == 256


def test_check_replies_match_the_reference_server() -> None:
    assert check_reply(DEVICE, "1.0.4", MANIFEST) == SERVER["GET /ota/check/<id>?version=1.0.4"]["json"]
    assert check_reply(DEVICE, "1.0.5", None) == SERVER["GET /ota/check/<id>?version=1.0.5"]["json"]


def test_the_device_reads_the_offer_from_update_info() -> None:
    offer = parse_check_reply(json.dumps(SERVER["GET /ota/check/<id>?version=1.0.4"]["json"]))
    assert offer == UpdateOffer.from_manifest(MANIFEST)
    assert parse_check_reply(json.dumps(SERVER["GET /ota/check/<id>?version=1.0.5"]["json"])) is None


def test_the_device_falls_back_to_firmware_size_and_insists_on_a_16_byte_iv() -> None:
    reply = check_reply(DEVICE, "1.0.4", MANIFEST)
    del reply["update_info"]["original_size"]
    offer = parse_check_reply(dumps(reply))
    assert offer is not None and offer.original_size == 4096
    reply["update_info"]["iv"] = base64.b64encode(bytes(15)).decode()
    with pytest.raises(DocumentError):
        parse_check_reply(dumps(reply))


def test_initiate_matches_the_reference_server() -> None:
    recorded = SERVER["POST /ota/initiate/<id> {firmware_version:1.0.5}"]["json"]
    session = session_id(DEVICE, "1.0.5", 1795861781)
    assert initiate_reply(DEVICE, session) == recorded
    assert parse_initiate_reply(json.dumps(recorded)) == session
    assert parse_initiate_request(initiate_request("1.0.5")) == "1.0.5"
    refused = SERVER["POST /ota/initiate/<id> again (session still open)"]["json"]
    assert error_reply("OTA session already in progress") == refused
    with pytest.raises(DocumentError):
        parse_initiate_reply(json.dumps(refused))


def test_initiate_without_a_version_is_refused_with_the_reference_text() -> None:
    with pytest.raises(DocumentError, match="firmware_version is required"):
        parse_initiate_request(b"{}")


def test_chunks_match_the_reference_server_and_read_back() -> None:
    recorded = SERVER["GET /ota/chunk/<id>?version=1.0.5&chunk=N"]
    assert len(recorded) == MANIFEST.total_chunks
    for index, answer in enumerate(recorded):
        data = chunk_of(ENCRYPTED, index, MANIFEST.chunk_size)
        assert chunk_reply(DEVICE, index, data) == answer["json"]
        assert parse_chunk_reply(json.dumps(answer["json"])) == data
    beyond = SERVER["GET /ota/chunk/<id>?version=1.0.5&chunk=total_chunks"]["json"]["error"]
    with pytest.raises(DocumentError, match=beyond):
        chunk_of(ENCRYPTED, MANIFEST.total_chunks, MANIFEST.chunk_size)


@pytest.mark.parametrize(
    "reply",
    [
        {"success": True, "chunk_data": base64.b64encode(bytes(32)).decode(), "chunk_size": 31},
        {"success": True, "chunk_data": base64.b64encode(bytes(1056)).decode(), "chunk_size": 1056},
        {"success": True, "chunk_data": "not base64!", "chunk_size": 0},
        {"success": False, "error": "No active OTA session"},
    ],
)
def test_chunk_replies_the_firmware_would_refuse(reply: dict[str, Any]) -> None:
    with pytest.raises(DocumentError):
        parse_chunk_reply(json.dumps(reply))


def test_complete_request() -> None:
    assert parse_complete_request(b'{"success":true}') is True
    with pytest.raises(DocumentError):
        parse_complete_request(b'{"success":"yes"}')


@pytest.mark.parametrize(
    "change",
    [
        {"total_chunks": 4},  # the tampered manifest 1.0.4 still accepts
        {"encrypted_size": 4096},
        {"chunk_size": 1000},
        {"sha256_hash": "AB" * 32},
        {"iv": base64.b64encode(bytes(8)).decode()},
        {"version": "latest"},
    ],
)
def test_inconsistent_manifests_are_refused_for_publishing(change: dict[str, Any]) -> None:
    with pytest.raises(DocumentError):
        dataclasses.replace(MANIFEST, **change).check_consistency()


def test_extended_manifests_are_signed_over_every_field() -> None:
    extended = dataclasses.replace(
        MANIFEST, device_type="ecowatt-esp32", security_counter=7, encrypted_sha256="ab" * 32
    )
    signed = sign_manifest(extended, PRIVATE)
    verify_manifest(signed, PUBLIC)
    again = parse_manifest(signed.to_json())
    assert again == signed
    verify_manifest(again, PUBLIC)
    for change in (
        {"security_counter": 8},
        {"version": "1.0.6"},
        {"device_type": "other"},
        {"iv": MANIFEST.signature},
    ):
        with pytest.raises(FirmwareError):
            verify_manifest(dataclasses.replace(signed, **change), PUBLIC)
    with pytest.raises(FirmwareError):
        verify_manifest(extended, PUBLIC)  # unsigned
    with pytest.raises(FirmwareError):
        verify_manifest(signed, generate_rsa_key().public_key())  # someone else's key


def test_the_reference_manifest_has_no_extensions_on_the_wire() -> None:
    assert not {"device_type", "security_counter", "encrypted_sha256", "manifest_signature"} & set(
        MANIFEST.to_dict()
    )


@pytest.mark.parametrize(
    ("candidate", "current", "allow_equal", "ok"),
    [
        (5, None, False, True),
        (6, 5, False, True),
        (5, 5, False, False),
        (5, 5, True, True),
        (4, 5, True, False),
        (None, 5, True, False),
    ],
)
def test_the_security_counter_only_goes_up(
    candidate: int | None, current: int | None, allow_equal: bool, ok: bool
) -> None:
    if ok:
        check_security_counter(candidate, current, allow_equal=allow_equal)
    else:
        with pytest.raises(FirmwareError):
            check_security_counter(candidate, current, allow_equal=allow_equal)


def test_versions_order_numerically() -> None:
    assert parse_version("1.0.10") > parse_version("1.0.9")
    for bad in ("", "1..0", "v1.0", "1.0.0.0.0", "١.0"):
        with pytest.raises(DocumentError):
            parse_version(bad)


PARSERS = (
    parse_manifest,
    parse_check_reply,
    parse_initiate_request,
    parse_initiate_reply,
    parse_chunk_reply,
    parse_complete_request,
)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_into_every_ota_parser_give_a_value_or_a_typed_error(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(EcoWattError):
            parse(data)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2**34),
    st.text(max_size=30),
    st.just("zTLQfzSXrpwwJO42x3lgfg=="),
)


@given(
    st.dictionaries(
        st.sampled_from(
            list(CASE["manifest_file"]) + ["security_counter", "device_type", "manifest_signature"]
        ),
        scalars,
    )
)
def test_arbitrary_manifest_fields_parse_check_or_raise_typed_errors(fields: dict[str, Any]) -> None:
    merged = {**CASE["manifest_file"], **fields}
    try:
        manifest = parse_manifest(json.dumps(merged))
    except DocumentError:
        return
    with contextlib.suppress(DocumentError):
        manifest.check_consistency()
    with contextlib.suppress(DocumentError):
        UpdateOffer.from_manifest(manifest)
    with contextlib.suppress(FirmwareError):
        verify_manifest(manifest, PUBLIC)


@given(
    st.dictionaries(
        st.sampled_from(list(SERVER["GET /ota/check/<id>?version=1.0.4"]["json"]["update_info"])), scalars
    )
)
def test_arbitrary_update_info_is_read_or_refused(fields: dict[str, Any]) -> None:
    reply = check_reply(DEVICE, "1.0.4", MANIFEST)
    reply["update_info"].update(fields)
    with contextlib.suppress(DocumentError):
        offer = parse_check_reply(dumps(reply))
        assert offer is not None and len(offer.iv) == 16
