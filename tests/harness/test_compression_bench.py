"""`ecowatt bench compression` on a short span: the report's numbers must add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main


def _run(tmp_path: Path, capsys, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    assert main(["bench", "compression", "--json", str(out), *args]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


@pytest.mark.parametrize(
    ("registers", "layout"), [(None, [0, 1, 5, 9, 6, 7]), ("Pac", [9]), ("Vac1,7", [0, 7])]
)
def test_report_is_consistent(tmp_path: Path, capsys, registers: str | None, layout: list[int]) -> None:
    args = ["--hours", "0.5", "--seed", "3"] + (["--registers", registers] if registers else [])
    report, stdout = _run(tmp_path, capsys, *args)
    batches = 1800 // 2 // 7
    assert report["batches"] == batches and report["samples"] == 7 * batches
    assert report["parameters"]["register_layout"] == layout
    codecs = {c["codec"]: c for c in report["codecs"]}
    assert list(codecs) == ["DICTIONARY", "TEMPORAL", "SEMANTIC", "BITPACK", "SMART"]
    for name, codec in codecs.items():
        assert name in stdout
        assert codec["batches"] == batches and codec["samples"] == 7 * batches
        assert codec["original_bytes"] == 2 * 7 * len(layout) * batches
        assert codec["ratio"] == pytest.approx(codec["compressed_bytes"] / codec["original_bytes"])
        assert sum(codec["formats"].values()) == batches
        assert codec["recovered"] + codec["lossy"] + codec["undecodable"] == batches
        assert len(codec["lossy_batches"]) == codec["lossy"]
        assert len(codec["undecodable_batches"]) == codec["undecodable"]
        assert sum(codec["undecodable_reasons"].values()) == codec["undecodable"]
        assert all(0 <= i < batches for i in codec["lossy_batches"] + codec["undecodable_batches"])
        assert codec["encode_cpu_us_per_batch"] > 0
    # Lossless formats recover everything; the firmware's pick is never longer than any candidate.
    assert codecs["BITPACK"]["recovered"] == batches
    assert codecs["TEMPORAL"]["lossy"] == 0
    smart = codecs["SMART"]
    assert sum(smart["winners"].values()) == batches
    assert smart["compressed_bytes"] <= min(c["compressed_bytes"] for c in report["codecs"])


def test_single_register_day_uses_temporal_delta_frames(tmp_path: Path, capsys) -> None:
    report, _ = _run(tmp_path, capsys, "--hours", "1", "--registers", "9")
    smart = report["codecs"][-1]
    assert smart["formats"].get("0x71", 0) > 0 and smart["winners"].get("TEMPORAL", 0) > 0


@pytest.mark.parametrize("args", [["--registers", "Nope"], ["--hours", "0.001"], ["--registers", ","]])
def test_bad_arguments_exit_2(args: list[str], capsys) -> None:
    assert main(["bench", "compression", *args]) == 2
