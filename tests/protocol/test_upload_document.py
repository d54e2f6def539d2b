"""The inner upload document: byte-identical with the firmware's, typed errors for anything else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import DocumentError
from protocol.upload_document import (
    CompressedPacket,
    UploadDocument,
    firmware_document,
    firmware_packet,
    parse_upload_document,
    register_mapping,
)

CASES = json.loads((Path(__file__).parents[2] / "fixtures/vectors/secured_upload.json").read_text())["cases"]
PAYLOADS = sorted({c["payload"] for c in CASES})


def _rebuild(packet: CompressedPacket) -> CompressedPacket:
    """The packet as the firmware would build it from the same inputs."""
    assert packet.metrics is not None
    meta = packet.metadata
    return firmware_packet(
        packet.compressed_binary,
        method=meta.method,
        register_layout=meta.register_layout,
        compressed_size=meta.compressed_size_bytes,
        timestamp=meta.timestamp,
        compression_time_us=packet.metrics.compression_time_us,
    )


@pytest.mark.parametrize("payload", PAYLOADS)
def test_recorded_documents_parse_and_serialise_back_byte_for_byte(payload: str) -> None:
    assert parse_upload_document(payload.encode()).to_json() == payload.encode()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_firmware_builder_reproduces_the_recorded_documents(payload: str) -> None:
    recorded = parse_upload_document(payload)
    rebuilt = firmware_document(
        recorded.device_id, recorded.timestamp, [_rebuild(p) for p in recorded.packets]
    )
    assert rebuilt.to_json() == payload.encode()


def test_the_firmware_figures_keep_its_defects() -> None:
    packet = firmware_packet(
        "AAAA",
        method="BATCH_BITPACK",
        register_layout=[0, 1, 5, 9, 6, 7],
        compressed_size=84,
        timestamp=1,
        compression_time_us=10,
    )
    other = firmware_packet(
        "AAAA",
        method="BATCH_BITPACK",
        register_layout=[3],
        compressed_size=14,
        timestamp=2,
        compression_time_us=5,
    )
    doc = firmware_document("dev", 99, [packet, other])
    assert packet.metadata.original_size_bytes == 12  # 2·n, not 14·n
    assert packet.metrics is not None and packet.metrics.academic_ratio == 1.0  # the ratio uses 14·n
    assert packet.metrics.lossless_verified is True
    assert doc.total_samples == 2  # counts packets
    assert doc.register_mapping == {
        "0": "Vac1",
        "1": "Iac1",
        "2": "Ipv1",
        "3": "Pac",
        "4": "Ipv2",
        "5": "Temp",
    }
    assert doc.session_summary is not None and doc.session_summary.total_original_bytes == 14
    fixed = firmware_packet(
        "AAAA",
        method="BATCH_BITPACK",
        register_layout=[3],
        compressed_size=14,
        timestamp=2,
        compression_time_us=5,
        original_size_bytes=14,
    )
    assert fixed.metadata.original_size_bytes == 14


def test_register_mapping_skips_the_firmwares_invalid_filler_id() -> None:
    assert register_mapping([9, -1, 8]) == {"0": "Pac", "2": "Pow"}


def _valid() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(PAYLOADS[0])
    return result


def _without(path: tuple[str | int, ...]) -> dict[str, Any]:
    doc = _valid()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


def _with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    doc = _valid()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "doc",
    [
        _without(("compressed_data",)),
        _without(("device_id",)),
        _without(("compressed_data", 0, "decompression_metadata")),
        _without(("compressed_data", 0, "decompression_metadata", "register_layout")),
        _with(("timestamp",), True),
        _with(("timestamp",), 2**32),
        _with(("timestamp",), 1.5),
        _with(("compressed_data",), {}),
        _with(("compressed_data", 0, "compressed_binary"), 42),
        _with(("compressed_data", 0, "decompression_metadata", "register_layout"), [0, "1"]),
        _with(("compressed_data", 0, "performance_metrics", "academic_ratio"), "0.5"),
        _with(("register_mapping",), {"0": 5}),
        _with(("device_id",), ""),
    ],
)
def test_wrong_shapes_are_document_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(DocumentError):
        parse_upload_document(json.dumps(doc))


def test_describing_parts_are_optional() -> None:
    doc = _without(("session_summary",))
    del doc["compressed_data"][0]["performance_metrics"]
    parsed = parse_upload_document(json.dumps(doc))
    assert parsed.session_summary is None and parsed.packets[0].metrics is None
    assert json.loads(parsed.to_json()) == doc


def test_a_truncated_document_is_a_document_error() -> None:
    # What the firmware signs once its 2048-byte buffer overflows (§4.2).
    with pytest.raises(DocumentError):
        parse_upload_document(PAYLOADS[0][:500])


@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_raise_document_error(data: bytes) -> None:
    try:
        doc = parse_upload_document(data)
    except DocumentError:
        return
    assert isinstance(doc, UploadDocument)


@given(st.data())
def test_arbitrary_json_in_the_document_shape_parses_or_raises_document_error(data: st.DataObject) -> None:
    scalar = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 2**33),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    )
    doc = _valid()
    paths = [
        ("timestamp",),
        ("total_samples",),
        ("register_mapping",),
        ("compressed_data", 0, "compressed_binary"),
        ("compressed_data", 0, "decompression_metadata", "register_count"),
        ("compressed_data", 0, "decompression_metadata", "register_layout"),
        ("compressed_data", 0, "performance_metrics", "lossless_verified"),
        ("session_summary", "overall_academic_ratio"),
    ]
    for path in data.draw(st.lists(st.sampled_from(paths), max_size=3)):
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(scalar | st.lists(scalar, max_size=3))
    try:
        parsed = parse_upload_document(json.dumps(doc))
    except DocumentError:
        return
    written = parsed.to_json()  # whatever was accepted can be written again, stably
    assert parse_upload_document(written).to_json() == written


layouts = st.lists(st.integers(0, 9), min_size=1, max_size=10)
packets = st.builds(
    lambda binary, layout, size, ts, us: firmware_packet(
        binary,
        method="BATCH_DICTIONARY",
        register_layout=layout,
        compressed_size=size,
        timestamp=ts,
        compression_time_us=us,
    ),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", max_size=40),
    layouts,
    st.integers(1, 200),
    st.integers(0, 2**32 - 1),
    st.integers(0, 10**6),
)


@given(st.text(min_size=1, max_size=30), st.integers(0, 2**32 - 1), st.lists(packets, min_size=1, max_size=5))
def test_built_documents_survive_parse_and_serialise(
    device_id: str, ts: int, items: list[CompressedPacket]
) -> None:
    text = firmware_document(device_id, ts, items).to_json()
    again = parse_upload_document(text)
    assert again.to_json() == text
    assert again.device_id == device_id
    assert [p.metadata.register_layout for p in again.packets] == [p.metadata.register_layout for p in items]
