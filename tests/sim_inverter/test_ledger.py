"""The ledger: ordered, bounded, and pageable with `since`."""

from __future__ import annotations

import pytest

from sim_inverter.ledger import Ledger


def _record(ledger: Ledger, n: int, outcome: str = "ok") -> None:
    ledger.record(
        t=float(n), transport="http", operation="read", slave=17, start=0, count=2, values=(n, n + 1),
        outcome=outcome,
    )


def test_sequence_numbers_start_at_one_and_since_pages_forward() -> None:
    ledger = Ledger()
    assert (ledger.last_seq, ledger.since(0)) == (0, [])
    for n in range(5):
        _record(ledger, n)
    assert [e.seq for e in ledger.since(0)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in ledger.since(3)] == [4, 5]
    assert [e.seq for e in ledger.since(1, limit=2)] == [2, 3]
    assert ledger.since(5) == [] and ledger.since(99) == []
    assert ledger.since(2)[0].values == (2, 3)


def test_ring_is_bounded_and_sequence_keeps_growing() -> None:
    ledger = Ledger(capacity=4)
    for n in range(10):
        _record(ledger, n)
    assert len(ledger) == 4
    assert (ledger.first_seq, ledger.last_seq) == (7, 10)
    # A reader that fell behind gets what is left and can see the gap (first seq > since + 1).
    assert [e.seq for e in ledger.since(2)] == [7, 8, 9, 10]
    assert [e.seq for e in ledger.since(8)] == [9, 10]


def test_entry_json_and_delivery() -> None:
    ledger = Ledger()
    _record(ledger, 1)
    ledger.record(
        t=2.0, transport="modbus-tcp", operation="write", slave=17, start=8, count=1, values=(101,),
        outcome="refused", exception_code=3,
    )
    _record(ledger, 3, outcome="crc_error")
    _record(ledger, 4, outcome="delay")
    ok, refused, spoiled, late = ledger.since(0)
    assert ok.to_json() == {
        "seq": 1, "t": 1.0, "transport": "http", "operation": "read", "slave": 17, "start": 0, "count": 2,
        "values": [1, 2], "outcome": "ok", "exception_code": None,
    }
    assert refused.to_json()["exception_code"] == 3
    assert [e.delivered for e in (ok, refused, spoiled, late)] == [True, False, False, True]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Ledger(capacity=0)
