"""The spec firmware's OTA report and completion bodies (protocol/ota_messages.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import DocumentError
from protocol.ota_messages import (
    REPORT_STATUSES,
    OtaReport,
    ReportPhase,
    complete_request,
    parse_complete_request,
    parse_ota_report,
)


def test_a_report_is_compact_json_without_unset_fields() -> None:
    report = OtaReport(ReportPhase.PROGRESS, "downloading", "1.2.0", chunks_done=3, total_chunks=9)
    assert report.to_json() == (
        b'{"phase":"progress","status":"downloading","version":"1.2.0","chunks_done":3,"total_chunks":9}'
    )
    assert parse_ota_report(report.to_json()) == report


@pytest.mark.parametrize(
    "report",
    [
        OtaReport("progress", "interrupted", "1.2.0", 4, 9, reason="HTTP 500"),
        OtaReport("verification", "failed", "1.2.0", reason="rsa_signature"),
        OtaReport("reboot", "rebooting", "1.2.0"),
        OtaReport("boot", "rolled_back", "1.2.0", running_version="1.1.0"),
    ],
)
def test_every_phase_round_trips(report: OtaReport) -> None:
    assert parse_ota_report(report.to_json()) == report


@pytest.mark.parametrize(
    "body",
    [
        b'{"phase":"download","status":"started","version":"1"}',  # unknown phase
        b'{"phase":"boot","status":"passed","version":"1"}',  # a status of another phase
        b'{"phase":"progress","status":"downloading","version":""}',
        b'{"phase":"progress","status":"downloading","version":"1","chunks_done":10,"total_chunks":9}',
        b'{"phase":"progress","status":"downloading","version":"1","chunks_done":-1}',
        b'{"phase":"reboot","status":"rebooting"}',
        b"[]",
    ],
)
def test_bad_reports_are_refused(body: bytes) -> None:
    with pytest.raises(DocumentError):
        parse_ota_report(body)


def test_every_phase_has_its_statuses() -> None:
    assert set(REPORT_STATUSES) == set(ReportPhase)


@pytest.mark.parametrize("success", [True, False])
def test_complete_request_round_trips(success: bool) -> None:
    assert complete_request(success) == (b'{"success":true}' if success else b'{"success":false}')
    assert parse_complete_request(complete_request(success)) is success


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_report_or_a_document_error(body: bytes) -> None:
    try:
        report = parse_ota_report(body)
    except DocumentError:
        return
    assert report.status in REPORT_STATUSES[ReportPhase(report.phase)]


@given(
    st.fixed_dictionaries(
        {"phase": st.sampled_from([p.value for p in ReportPhase] + ["x"]), "status": st.text(max_size=12)},
        optional={
            "version": st.text(max_size=8) | st.integers(),
            "chunks_done": st.integers(-2, 20) | st.floats() | st.none(),
            "total_chunks": st.integers(-2, 20) | st.text(max_size=3),
            "reason": st.text(max_size=8) | st.none(),
        },
    )
)
def test_arbitrary_json_objects_give_a_report_or_a_document_error(fields: dict[str, object]) -> None:
    try:
        report = parse_ota_report(json.dumps(fields))
    except DocumentError:
        return
    assert report.phase == fields["phase"] and report.status == fields["status"]
