"""The command, config, diagnostics and fault parsers: whatever comes in, a value or a typed error."""

from __future__ import annotations

import contextlib
import json

from hypothesis import example, given
from hypothesis import strategies as st

from cloud import diagnostics, faults, remote_config
from cloud.commands import parse_queue_body
from cloud.operator_cli import sample_lines
from cloud.operator_client import SseEvent
from protocol.command_message import validate_command
from protocol.errors import DocumentError, EcoWattError

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=4), max_leaves=12)
keys = st.sampled_from(["fault_type", "probability", "duration_seconds", "device_id", "parameters", "seconds",
                        "after", "keep_bytes", "paths", "retry_after", "poll_interval", "upload_interval",
                        "registers", "command", "command_type"]) | st.text(max_size=8)
objects = st.dictionaries(keys, values | st.sampled_from(list(faults.KINDS)) | st.lists(st.integers(-2, 12)),
                          max_size=6)
bodies = st.binary(max_size=200) | objects.map(lambda o: json.dumps(o).encode())


@given(bodies)
def test_fault_requests(body: bytes) -> None:
    try:
        spec = faults.parse_fault_request(body)
    except DocumentError:
        return
    assert spec.kind in faults.KINDS and 0 < spec.probability <= 1


@given(objects)
def test_config_changes(fields: dict) -> None:
    try:
        change = remote_config.parse_change(fields)
    except DocumentError:
        return
    assert change.fields()
    assert change.registers is None or list(change.registers) == sorted(set(change.registers))


@given(objects)
def test_queue_requests(fields: dict) -> None:
    try:
        kind, parameters = parse_queue_body(fields)
        checked = validate_command(kind, parameters) if isinstance(kind, str) else None
    except EcoWattError:
        return
    assert checked is None or all(isinstance(v, int) for v in checked.values())


@given(bodies)
def test_diagnostics_documents(body: bytes) -> None:
    with contextlib.suppress(DocumentError):
        assert isinstance(diagnostics.parse_document(body), dict)


samples = st.lists(st.dictionaries(st.sampled_from(["register", "address", "raw", "value", "unit", "sampled_at",
                                                    "boot_id", "packet_ts", "status"]), values), max_size=3) | values
events = st.fixed_dictionaries({"kind": st.just("telemetry") | values,
                                "data": st.fixed_dictionaries({"samples": samples, "received_at": values}) | values,
                                "device_id": values}) | values


@given(st.none() | st.just("telemetry"), events)
@example(None, {"kind": "telemetry", "data": {"samples": True, "received_at": None}, "device_id": None})
def test_tail_lines_from_any_event(kind: str | None, data: object) -> None:
    assert all(isinstance(line, str) for line in sample_lines(SseEvent(kind, data), None))
