"""The secured-upload envelope against the firmware's recorded envelopes, and on arbitrary input."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.envelope import (
    REFERENCE_PSK,
    Envelope,
    OpenedEnvelope,
    build_envelope,
    check_nonce,
    compute_mac,
    open_envelope,
    parse_envelope,
    verify_envelope,
)
from protocol.errors import AuthenticationError, EnvelopeError, ReplayError
from protocol.upload_document import parse_upload_document

VECTORS = json.loads((Path(__file__).parents[2] / "fixtures/vectors/secured_upload.json").read_text())
CASES: list[dict[str, Any]] = VECTORS["cases"]
UINT32 = st.integers(0, 2**32 - 1)


def test_the_vectors_use_the_firmware_key() -> None:
    assert bytes.fromhex(VECTORS["device_psk_hex"]) == REFERENCE_PSK


def _serve(case: dict[str, Any], last_nonces: dict[str, int]) -> str:
    """What our /process decides, with `last_nonces` as the server's nonce table."""
    try:
        opened = open_envelope(case["envelope_body"].encode(), REFERENCE_PSK)
    except ReplayError:
        return "reject_replay"
    except AuthenticationError:
        return "reject_mac"
    except EnvelopeError:
        return "reject"
    # The nonce table is keyed by the device named in the *authenticated* document, not by the URL,
    # so a captured envelope cannot be replayed under another id.
    device = parse_upload_document(opened.document).device_id
    try:
        check_nonce(opened.nonce, last_nonces.get(device))
    except ReplayError:
        return "reject_replay"
    last_nonces[device] = opened.nonce
    return "accept"


def test_the_thirteen_cases_in_order_get_the_recommended_verdicts() -> None:
    last_nonces: dict[str, int] = {}
    verdicts = {}
    for case in CASES:
        # `replay_after_nonce_reset` follows an unauthenticated DELETE /security/nonces: ours refuses
        # that request, so the table is deliberately left as it is.
        verdicts[case["name"]] = _serve(case, last_nonces)
    assert verdicts == {case["name"]: case["recommended_verdict"] for case in CASES}
    assert last_nonces == {"ESP32_EcoWatt_Smart": 50001}


def test_an_oversize_nonce_is_a_malformed_envelope() -> None:
    (case,) = [c for c in CASES if c["name"] == "nonce_exceeds_uint32"]
    with pytest.raises(EnvelopeError):
        parse_envelope(case["envelope_body"])


def _honest(case: dict[str, Any]) -> bool:
    """The case's MAC is the one its key gives (not a deliberately broken one)."""
    key, nonce, document = bytes.fromhex(case["psk_hex"]), case["nonce"], case["payload"].encode()
    return nonce < 2**32 and case["mac"] == compute_mac(key, nonce, document)


HONEST = [c for c in CASES if _honest(c)]


@pytest.mark.parametrize("case", HONEST, ids=lambda c: c["name"])
def test_build_reproduces_the_firmware_bytes(case: dict[str, Any]) -> None:
    encrypted = json.loads(case["envelope_body"])["encrypted"]
    key, document = bytes.fromhex(case["psk_hex"]), case["payload"].encode()
    assert build_envelope(key, case["nonce"], document, encrypted=encrypted) == case["envelope_body"].encode()


def test_the_honestly_built_cases_include_plain_and_encrypted() -> None:
    assert {"valid_first_upload", "wrong_key", "encrypted_mode_server_only"} <= {c["name"] for c in HONEST}


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["recommended_verdict"] == "reject_mac"], ids=lambda c: c["name"]
)
def test_error_texts_leak_neither_key_nor_computed_mac(case: dict[str, Any]) -> None:
    body = case["envelope_body"]
    with pytest.raises(AuthenticationError) as info:
        open_envelope(body, REFERENCE_PSK)
    computed = compute_mac(REFERENCE_PSK, case["nonce"], case["payload"].encode())
    text = str(info.value)
    assert computed[:16] not in text.lower()
    assert REFERENCE_PSK.hex() not in text.lower()


def test_a_replay_error_does_not_reveal_the_stored_nonce() -> None:
    with pytest.raises(ReplayError) as info:
        check_nonce(10001, 73129)
    assert "73129" not in str(info.value)
    assert info.value.value == 10001


def test_authentication_failures_read_the_same_whatever_went_wrong() -> None:
    document = b'{"device_id":"X"}'
    good = json.loads(build_envelope(REFERENCE_PSK, 7, document, encrypted=True))
    bad_padding = dict(good, payload=base64.b64encode(b"\x00" * 16).decode())  # decrypts to garbage
    bad_length = dict(good, payload=base64.b64encode(b"\x00" * 5).decode())
    wrong_mac = dict(good, mac="0" * 64)
    messages = set()
    for body in (bad_padding, bad_length, wrong_mac):
        with pytest.raises(AuthenticationError) as info:
            open_envelope(json.dumps(body), REFERENCE_PSK)
        messages.add(str(info.value))
    assert len(messages) == 1  # no padding oracle


@given(st.binary(max_size=300), UINT32, st.booleans(), st.binary(min_size=32, max_size=32))
def test_build_then_open_round_trips(document: bytes, nonce: int, encrypted: bool, psk: bytes) -> None:
    opened = open_envelope(build_envelope(psk, nonce, document, encrypted=encrypted), psk)
    assert opened == OpenedEnvelope(nonce=nonce, document=document, encrypted=encrypted)


@given(st.binary(min_size=1, max_size=200), UINT32, st.data())
def test_any_change_to_the_document_or_nonce_fails_authentication(
    document: bytes, nonce: int, data: st.DataObject
) -> None:
    envelope = parse_envelope(build_envelope(REFERENCE_PSK, nonce, document))
    i = data.draw(st.integers(0, len(document) - 1))
    flipped = document[:i] + bytes([document[i] ^ data.draw(st.integers(1, 255))]) + document[i + 1 :]
    with pytest.raises(AuthenticationError):
        verify_envelope(Envelope(nonce, flipped, envelope.mac), REFERENCE_PSK)
    other = data.draw(UINT32.filter(lambda n: n != nonce))
    with pytest.raises(AuthenticationError):
        verify_envelope(Envelope(other, document, envelope.mac), REFERENCE_PSK)


@given(UINT32, st.one_of(st.none(), UINT32))
def test_a_nonce_is_fresh_exactly_when_greater_than_the_last(nonce: int, last: int | None) -> None:
    try:
        check_nonce(nonce, last)
    except ReplayError:
        assert last is not None and nonce <= last
    else:
        assert last is None or nonce > last


@given(st.binary(max_size=400))
def test_arbitrary_bytes_open_or_raise_a_typed_error(body: bytes) -> None:
    try:
        opened = open_envelope(body, REFERENCE_PSK)
    except (EnvelopeError, AuthenticationError):
        return
    assert isinstance(opened.document, bytes)


field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
    st.just("AAAA"),
    st.just("="),
    st.just("0" * 64),
)


@given(st.dictionaries(st.sampled_from(["nonce", "payload", "mac", "encrypted", "device_id"]), field_values))
def test_arbitrary_envelope_fields_parse_or_raise_a_typed_error(fields: dict[str, Any]) -> None:
    try:
        opened = open_envelope(json.dumps(fields), REFERENCE_PSK)
    except (EnvelopeError, AuthenticationError):
        return
    assert 0 <= opened.nonce < 2**32


@pytest.mark.parametrize(
    "body",
    [
        '{"nonce":1,"payload":"e30=","mac":"' + "0" * 64 + '","nonce":2}',  # duplicate key
        '{"nonce":true,"payload":"e30=","mac":""}',  # a boolean is not a nonce
        '{"nonce":1.0,"payload":"e30=","mac":""}',
        '{"nonce":-1,"payload":"e30=","mac":""}',
        '{"nonce":1,"payload":"e30","mac":""}',  # base64 without its padding
        '{"nonce":1,"payload":"e30=","mac":5}',
        '{"nonce":1,"payload":"e30=","mac":"","encrypted":"false"}',
        '{"payload":"e30=","mac":""}',
    ],
)
def test_malformed_envelopes_are_envelope_errors(body: str) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(body)


def test_extra_fields_are_ignored_and_encrypted_defaults_to_false() -> None:
    document = b"{}"
    body = {
        "device_id": "whoever",
        "nonce": 3,
        "payload": "e30=",
        "mac": compute_mac(REFERENCE_PSK, 3, document),
    }
    assert open_envelope(json.dumps(body), REFERENCE_PSK) == OpenedEnvelope(3, document, False)
