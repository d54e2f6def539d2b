"""Firmware crypto primitives: AES-256-CBC streaming, PKCS#7, RSA signatures, keys."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import FirmwareError
from protocol.firmware_crypto import (
    SignatureScheme,
    StreamingDecryptor,
    chunk_tag,
    decrypt_image,
    encrypt_image,
    generate_aes_key,
    generate_rsa_key,
    load_private_key_pem,
    load_public_key_pem,
    private_key_to_pem,
    public_key_to_pem,
    sign_data,
    sign_digest,
    strip_pkcs7,
    verify_data,
    verify_digest,
)

CASE = json.loads((Path(__file__).parents[2] / "fixtures/vectors/fota_case.json").read_text())
KEY = bytes.fromhex(CASE["aes256_key_hex"])
IV = base64.b64decode(CASE["manifest_file"]["iv"])
IMAGE = base64.b64decode(CASE["plaintext_b64"])
ENCRYPTED = base64.b64decode(CASE["encrypted_b64"])
PRIVATE = load_private_key_pem(CASE["rsa_private_key_pem"])
PUBLIC = load_public_key_pem(CASE["rsa_public_key_pem"])
SIGNATURE = base64.b64decode(CASE["manifest_file"]["signature"])
DIGEST = hashlib.sha256(IMAGE).digest()


def test_encryption_reproduces_the_reference_tool_with_its_iv() -> None:
    assert encrypt_image(IMAGE, KEY, IV) == (IV, ENCRYPTED)
    assert len(ENCRYPTED) == len(IMAGE) + 16  # aligned input still gets a whole padding block
    assert decrypt_image(ENCRYPTED, KEY, IV) == IMAGE
    assert DIGEST.hex() == CASE["plaintext_sha256"]


def test_the_reference_signature_is_pkcs1_v15_over_the_prehashed_digest_not_pss() -> None:
    verify_digest(PUBLIC, DIGEST, SIGNATURE, SignatureScheme.PKCS1V15)
    with pytest.raises(FirmwareError):
        verify_digest(PUBLIC, DIGEST, SIGNATURE, SignatureScheme.PSS)
    # PKCS#1 v1.5 is deterministic: signing again gives the recorded bytes.
    assert sign_digest(PRIVATE, DIGEST) == SIGNATURE


def test_the_reference_chunk_tags() -> None:
    for index, chunk in enumerate(CASE["firmware_manager_get_chunk"]):
        data = base64.b64decode(chunk["data"])
        assert chunk_tag(CASE["chunk_hmac_psk_ascii"], data, index) == chunk["hmac"]


def test_a_random_iv_each_time() -> None:
    first, second = encrypt_image(b"image", KEY), encrypt_image(b"image", KEY)
    assert first[0] != second[0] and first[1] != second[1]


@given(
    st.binary(max_size=2000), st.lists(st.integers(0, 2100), max_size=8), st.binary(min_size=16, max_size=16)
)
def test_streaming_over_any_split_equals_one_shot(image: bytes, cuts: list[int], iv: bytes) -> None:
    _, ciphertext = encrypt_image(image, KEY, iv)
    bounds = sorted({min(c, len(ciphertext)) for c in cuts} | {0, len(ciphertext)})
    decryptor = StreamingDecryptor(KEY, iv)
    plaintext = b"".join(decryptor.update(ciphertext[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    plaintext += decryptor.finish()
    assert plaintext == image
    assert decryptor.digest() == hashlib.sha256(image).digest()
    assert decryptor.plaintext_size == len(image)
    pad = 16 - len(image) % 16
    assert decryptor.first_block == (image + bytes([pad]) * pad)[:16]  # for the image-magic check


def test_the_chain_carries_across_chunks() -> None:
    # Decrypting chunk 1 on its own with the manifest IV gives garbage; in the stream it is right.
    decryptor = StreamingDecryptor(KEY, IV)
    decryptor.update(ENCRYPTED[:1024])
    assert decryptor.update(ENCRYPTED[1024:2048]) == IMAGE[1008:2032]
    alone = StreamingDecryptor(KEY, IV)
    assert alone.update(ENCRYPTED[1024:2048]) != IMAGE[1024:2032]


@pytest.mark.parametrize(
    ("data", "stripped"),
    [
        (b"A" * 15 + b"\x01", b"A" * 15),
        (b"\x10" * 16, b""),
        (b"A" * 14 + b"\x01\x02", None),  # claims 2, has one 0x02
        (b"A" * 15 + b"\x00", None),
        (b"A" * 15 + b"\x11", None),
        (b"", None),
        (b"\x01" * 15, None),  # not whole blocks
    ],
)
def test_pkcs7_padding(data: bytes, stripped: bytes | None) -> None:
    assert strip_pkcs7(data) == stripped


def test_bad_padding_fails_strictly_and_is_kept_leniently() -> None:
    last_block_broken = (
        ENCRYPTED[:-17] + bytes([ENCRYPTED[-17] ^ 0x01]) + ENCRYPTED[-16:]
    )  # last byte becomes 0x11
    with pytest.raises(FirmwareError, match="padding"):
        decrypt_image(last_block_broken, KEY, IV)
    lenient = StreamingDecryptor(KEY, IV, strict_padding=False)
    assert len(lenient.update(last_block_broken) + lenient.finish()) == len(last_block_broken)


@given(st.binary(max_size=200), st.binary(min_size=16, max_size=16))
def test_arbitrary_ciphertext_decrypts_or_raises_firmware_error(ciphertext: bytes, iv: bytes) -> None:
    with contextlib.suppress(FirmwareError):
        decrypt_image(ciphertext, KEY, iv)


@pytest.mark.parametrize(("key", "iv"), [(bytes(16), bytes(16)), (bytes(32), bytes(8))])
def test_wrong_key_or_iv_sizes_are_firmware_errors(key: bytes, iv: bytes) -> None:
    with pytest.raises(FirmwareError):
        encrypt_image(b"x", key, iv)
    with pytest.raises(FirmwareError):
        StreamingDecryptor(key, iv)


def test_a_finished_stream_takes_no_more_data() -> None:
    decryptor = StreamingDecryptor(KEY, IV)
    decryptor.update(ENCRYPTED)
    decryptor.finish()
    with pytest.raises(FirmwareError):
        decryptor.update(b"x" * 16)
    with pytest.raises(FirmwareError):
        decryptor.finish()


def test_truncated_ciphertext_is_a_firmware_error() -> None:
    decryptor = StreamingDecryptor(KEY, IV)
    decryptor.update(ENCRYPTED[:-3])
    with pytest.raises(FirmwareError, match="multiple of 16"):
        decryptor.finish()


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_sign_and_verify_each_scheme(scheme: SignatureScheme) -> None:
    signature = sign_data(PRIVATE, b"manifest bytes", scheme)
    verify_data(PUBLIC, b"manifest bytes", signature, scheme)
    other = next(s for s in SignatureScheme if s is not scheme)
    for args in ((b"manifest bytez", signature, scheme), (b"manifest bytes", signature, other)):
        with pytest.raises(FirmwareError):
            verify_data(PUBLIC, *args)


def test_a_digest_must_be_32_bytes() -> None:
    with pytest.raises(FirmwareError):
        sign_digest(PRIVATE, b"short")


def test_generated_keys_round_trip_through_pem() -> None:
    key = generate_rsa_key()
    assert key.key_size == 2048
    again = load_private_key_pem(private_key_to_pem(key))
    public = load_public_key_pem(public_key_to_pem(again))
    signature = sign_digest(key, DIGEST)
    verify_digest(public, DIGEST, signature)
    assert public_key_to_pem(PRIVATE) == CASE["rsa_public_key_pem"].encode()
    assert len(generate_aes_key()) == 32


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_not_keys(data: bytes) -> None:
    with contextlib.suppress(FirmwareError):
        load_private_key_pem(data)
    with contextlib.suppress(FirmwareError):
        load_public_key_pem(data)


def test_pem_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(FirmwareError):
        load_private_key_pem(CASE["rsa_public_key_pem"])
    with pytest.raises(FirmwareError):
        load_public_key_pem(CASE["rsa_private_key_pem"])
