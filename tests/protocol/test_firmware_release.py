"""Preparing a release and the device's download procedure, against the recorded FOTA case."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import FirmwareError
from protocol.firmware_crypto import SignatureScheme, load_private_key_pem, load_public_key_pem
from protocol.firmware_release import FirmwareDownload, prepare_release, run_download
from protocol.ota_messages import UpdateOffer, parse_manifest, verify_manifest

CASE = json.loads((Path(__file__).parents[2] / "fixtures/vectors/fota_case.json").read_text())
KEY = bytes.fromhex(CASE["aes256_key_hex"])
IMAGE = base64.b64decode(CASE["plaintext_b64"])
PRIVATE = load_private_key_pem(CASE["rsa_private_key_pem"])
PUBLIC = load_public_key_pem(CASE["rsa_public_key_pem"])
MANIFEST = parse_manifest(json.dumps(CASE["manifest_file"]))
OFFER = UpdateOffer.from_manifest(MANIFEST)
CHUNKS = [base64.b64decode(c["data"]) for c in CASE["firmware_manager_get_chunk"]]
VERDICTS = CASE["device_verification"]


def _download(offer: UpdateOffer = OFFER, **switches: bool) -> FirmwareDownload:
    return FirmwareDownload(offer, KEY, PUBLIC, **switches)


def test_prepare_reproduces_the_reference_manifest_and_blob() -> None:
    manifest = CASE["manifest_file"]
    release = prepare_release(
        IMAGE, "1.0.5", KEY, PRIVATE, timestamp=manifest["timestamp"], iv=base64.b64decode(manifest["iv"])
    )
    assert release.manifest.to_dict() == manifest
    assert release.encrypted == base64.b64decode(CASE["encrypted_b64"])
    assert [release.chunk(i) for i in range(release.manifest.total_chunks)] == CHUNKS


def test_genuine_image_verifies() -> None:
    verdict = run_download(_download(), CHUNKS)
    assert verdict.ok and verdict.sha256 == VERDICTS["genuine"]["sha256_of_written_image"]


def test_one_flipped_ciphertext_bit_fails_the_signature() -> None:
    chunks = list(CHUNKS)
    chunks[2] = chunks[2][:100] + bytes([chunks[2][100] ^ 1]) + chunks[2][101:]
    verdict = run_download(_download(), chunks)
    expected = VERDICTS["chunk2_one_bit_flipped"]
    assert (verdict.ok, verdict.stage) == (expected["ok"], expected["stage"])
    assert verdict.sha256 == expected["sha256_of_written_image"]


def test_a_wrong_iv_fails_the_magic_byte_at_chunk_0() -> None:
    verdict = run_download(_download(dataclasses.replace(OFFER, iv=bytes(16))), CHUNKS)
    expected = VERDICTS["wrong_iv"]
    assert (verdict.ok, verdict.stage, verdict.chunk) == (
        expected["ok"],
        expected["stage"],
        expected["chunk"],
    )


def test_a_wrong_manifest_hash_passes_1_0_4_but_not_the_fixed_firmware() -> None:
    offer = dataclasses.replace(OFFER, sha256_hash="00" * 32)
    reference = run_download(_download(offer), CHUNKS)
    assert reference.ok is VERDICTS["manifest_sha256_wrong_but_signature_valid"]["ok"]
    fixed = run_download(_download(offer, check_manifest_hash=True), CHUNKS)
    assert (fixed.ok, fixed.stage) == (False, "manifest_hash")


def test_dropping_the_padding_only_chunk_still_verifies() -> None:
    offer = dataclasses.replace(OFFER, total_chunks=OFFER.total_chunks - 1)
    verdict = run_download(_download(offer), CHUNKS)
    expected = VERDICTS["manifest_total_chunks_reduced_by_one"]
    assert verdict.ok is expected["ok"] and verdict.sha256 == expected["sha256_of_written_image"]
    strict = run_download(_download(offer, strict_padding=True), CHUNKS)
    assert (strict.ok, strict.stage) == (False, "padding")


def test_chunks_must_come_in_order_in_whole_blocks_within_the_buffer() -> None:
    download = _download()
    with pytest.raises(FirmwareError):
        download.accept_chunk(1, CHUNKS[1])
    assert download.stage == "chunk"
    for bad in (CHUNKS[0][:1000], b"", CHUNKS[0] + CHUNKS[1][:32]):
        with pytest.raises(FirmwareError):
            _download().accept_chunk(0, bad)


def test_a_short_download_and_an_oversize_image_are_caught() -> None:
    download = _download()
    for i in range(3):
        download.accept_chunk(i, CHUNKS[i])
    with pytest.raises(FirmwareError):
        download.finish()
    assert download.stage == "size"
    small = run_download(_download(dataclasses.replace(OFFER, original_size=2000)), CHUNKS)
    assert (small.ok, small.stage) == (False, "write")
    with pytest.raises(FirmwareError):
        FirmwareDownload(OFFER, KEY, PUBLIC, partition_size=4096)


@given(st.lists(st.binary(max_size=1100), max_size=7))
def test_arbitrary_chunks_give_a_verdict_not_a_crash(chunks: list[bytes]) -> None:
    verdict = run_download(_download(), chunks)
    assert not verdict.ok and verdict.stage != "verified"


@given(
    st.binary(min_size=1, max_size=3000).map(lambda b: b"\xe9" + b), st.sampled_from([16, 256, 1024, 1040])
)
def test_any_prepared_release_downloads_and_verifies(image: bytes, chunk_size: int) -> None:
    release = prepare_release(
        image,
        "2.0.0",
        KEY,
        PRIVATE,
        timestamp="2025-01-01T00:00:00",
        chunk_size=chunk_size,
        device_type="ecowatt-esp32",
        security_counter=3,
        manifest_key=PRIVATE,
    )
    release.manifest.check_consistency()
    verify_manifest(release.manifest, PUBLIC)
    assert release.manifest.encrypted_sha256 == hashlib.sha256(release.encrypted).hexdigest()
    chunks = [release.chunk(i) for i in range(release.manifest.total_chunks)]
    offer = UpdateOffer.from_manifest(release.manifest)
    verdict = run_download(
        FirmwareDownload(offer, KEY, PUBLIC, strict_padding=True, check_manifest_hash=True), chunks
    )
    assert verdict.ok and verdict.sha256 == hashlib.sha256(image).hexdigest()


def test_a_pss_release_needs_a_pss_verifier() -> None:
    release = prepare_release(IMAGE, "1.0.6", KEY, PRIVATE, timestamp="t", scheme=SignatureScheme.PSS)
    chunks = [release.chunk(i) for i in range(release.manifest.total_chunks)]
    offer = UpdateOffer.from_manifest(release.manifest)
    assert run_download(FirmwareDownload(offer, KEY, PUBLIC, scheme=SignatureScheme.PSS), chunks).ok
    assert run_download(FirmwareDownload(offer, KEY, PUBLIC), chunks).stage == "rsa_signature"


def test_a_chunk_size_the_firmware_cannot_take_is_refused() -> None:
    with pytest.raises(FirmwareError):
        prepare_release(IMAGE, "1.0.6", KEY, PRIVATE, timestamp="t", chunk_size=2048)
