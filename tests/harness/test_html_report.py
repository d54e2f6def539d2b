"""The HTML report of a run: built from a recorded run of the real stack, checked for structure, then
opened in headless Chromium (screenshot and DOM after its script ran)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.clocks import parse_time
from harness.html_report import (
    LANE_COLOURS,
    SERIES_COLOURS,
    RunData,
    grade,
    load_run,
    parse_campaign,
    render_report,
    scenarios_from_junit,
    write_report,
)
from harness.report import Measurement, RunRecord, ScenarioResult, write_record
from harness.report_cli import add_commands
from harness.run_recorder import LANES, TRACES_DIR, RunRecorder
from harness.stack import Stack, StackOptions
from protocol.errors import DocumentError

SCENARIO = "scenarios/test_day.py::test_faults_and_ota"
CHROMIUM = Path("/usr/bin/chromium")
REPLAY = "ecowatt campaign run scenarios/test_day.py --seeds 7..7 --faults spec"


# --- a recorded run -----------------------------------------------------------------------------------------


async def _drive(clock: Any, directory: Path) -> RunRecorder:
    """Twenty minutes of device time with an OTA update slowed by latency, bus faults, a partition of the
    cloud link and a power cut."""
    async with Stack(StackOptions(profile="spec", upload_s=60, poll_s=10), clock, directory / "stack") as stack:
        recorder = RunRecorder.attach(stack, SCENARIO)
        await stack.cloud.publish_firmware("1.2.0", size=48 * 1024)
        await stack.cloud.rollout("1.2.0", [stack.dut.device_id])
        stack.faults.network("cloud", "latency", latency=1500, after=40, duration=150)
        await stack.faults.bus("CRC_ERROR")
        stack.faults.partition("cloud", after=420, duration=180)
        await clock.advance(minutes=4)
        await stack.faults.bus("EXCEPTION", exception_code=4, count=3)
        await clock.advance(minutes=10)
        await stack.faults.power_cut(off_s=30)
        await clock.advance(minutes=6)
        return await recorder.collect(stack)


def _measurements(trace: RunRecorder) -> list[Measurement]:
    ratios = [u.ratio for u in trace.uploads if u.ratio is not None]
    ratio = sum(ratios) / len(ratios)
    seconds = sum(s.seconds for s in trace.energy)
    average = sum(s.charge_mah for s in trace.energy) * 3600.0 / seconds
    return [
        Measurement("compression_ratio", ratio, "x", low=ratio / 2),  # well inside: pass
        Measurement("average_current", average, "mA", high=average * 1.05),  # 5 % under its limit: marginal
        Measurement("uploads", len(trace.uploads), "", low=len(trace.uploads) + 10),  # below its limit: fail
    ]


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    clock = parse_time("virtual")
    trace = clock.run(_drive(clock, run_dir))
    trace.write(run_dir / TRACES_DIR)
    scenarios = [
        ScenarioResult(SCENARIO, "passed", 4.2, measurements=tuple(_measurements(trace))),
        ScenarioResult("scenarios/test_ota.py::test_resume", "xfailed", 1.0, reason="known defect: no resume"),
    ]
    write_record(RunRecord("2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", 5.0, ["pytest"], 1,
                           {"profile": "spec", "seed": 7, "git_commit": "0123456789abcdef"}, scenarios), run_dir)
    runs = [{"seed": 5, "violations": []}, {"seed": 6, "violations": []},
            {"seed": 7, "violations": ["conservation: sample 12 missing"], "shrunk": [{"fault": "ack_loss", "at": 30}],
             "replay": REPLAY}]
    (run_dir / "campaign.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return run_dir


@pytest.fixture(scope="module")
def report_path(recorded_run: Path) -> Path:
    return write_report(recorded_run)


# --- the trace ------------------------------------------------------------------------------------------------


def test_the_trace_of_a_real_run_has_every_kind_of_event(recorded_run: Path) -> None:
    trace = RunRecorder.load(next((recorded_run / TRACES_DIR).glob("*.json")))
    dut = trace.duts[0]
    lanes = {lane: [e for e in trace.events if e.lane == lane] for lane in LANES}
    assert all(lanes[lane] for lane in LANES), {lane: len(events) for lane, events in lanes.items()}
    assert any("upload ok" in e.label for e in lanes["serial"])
    assert any(e.status != "ok" for e in lanes["modbus"])  # the CRC error and the exceptions
    partition = next(e for e in lanes["fault"] if "partition" in e.label)
    assert partition.end is not None and partition.end - partition.t == pytest.approx(180, abs=1)
    assert any(e.label == "off" and e.end is not None for e in lanes["power"])
    phases = [o.phase for o in trace.ota]
    assert phases[0] == "started" and "verified" in phases
    assert max(o.t for o in trace.ota) - min(o.t for o in trace.ota) > 5  # the latency spread the download
    assert len(trace.uploads) >= 12 and all(u.size > 0 for u in trace.uploads)
    assert all(r > 1.0 for r in (u.ratio for u in trace.uploads) if r is not None)
    assert {"light_sleep", "wifi_rx", "off"} <= {s.state for s in trace.energy}
    assert {"Vac1", "Pac"} <= set(trace.registers[0].values) and trace.registers[0].dut == dut
    assert RunRecorder.from_json(json.loads(json.dumps(trace.to_json()))).to_json() == trace.to_json()


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
                        ["schema", "duts", "events", "registers", "uploads", "energy", "ota", "info", "t", "lane",
                         "label", "dut", "values", "size", "ratio", "state", "seconds", "milliamps", "percent"]),
                        inner, max_size=6), max_leaves=20))
def test_any_json_is_a_trace_or_a_document_error(doc: Any) -> None:
    if isinstance(doc, dict):
        doc["schema"] = "ecowatt-hil/run-trace/1"
    try:
        trace = RunRecorder.from_json(doc)
    except DocumentError:
        return
    assert render_report(RunData(Path("."), traces=[trace])).endswith("</html>")  # and it renders


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_scenarios_or_a_document_error(data: bytes) -> None:
    for parse, argument in ((scenarios_from_junit, data), (parse_campaign, data.decode("utf-8", "replace"))):
        try:
            result = parse(argument)  # type: ignore[operator]
        except DocumentError:
            continue
        assert isinstance(result, list)


def test_unreadable_parts_of_a_run_directory_are_named_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{not json")
    (tmp_path / TRACES_DIR).mkdir()
    (tmp_path / TRACES_DIR / "a.json").write_text('{"schema": "something else"}')
    (tmp_path / "junit.xml").write_text('<testsuite><testcase classname="scenarios.test_a" name="test_b">'
                                        '<failure message="boom"/></testcase></testsuite>')
    run = load_run(tmp_path)
    assert [p.split(":")[0] for p in run.problems] == ["report.json", f"{TRACES_DIR}/a.json"]
    assert [(s.name, s.verdict, s.reason) for s in run.scenarios] == [("test_a::test_b", "failed", "boom")]
    assert "boom" in render_report(run)


# --- grades ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "low", "high", "band", "expected"), [
    (5.0, 0.0, 10.0, None, "pass"),
    (9.5, 0.0, 10.0, None, "marginal"),  # within 10 % of the span from the high limit
    (0.5, 0.0, 10.0, None, "marginal"),
    (10.5, 0.0, 10.0, None, "fail"),
    (2.3, 2.0, None, None, "pass"),  # one limit: 10 % of its magnitude is 0.2
    (2.1, 2.0, None, None, "marginal"),
    (2.1, 2.0, None, 0.05, "pass"),  # the measurement's own band
    (2.01, 2.0, None, 0.05, "marginal"),
    (3.0, None, None, None, "info"),
])
def test_measurements_are_graded_pass_marginal_or_fail(value: float, low: float | None, high: float | None,
                                                       band: float | None, expected: str) -> None:
    assert grade(Measurement("m", value, "", low, high), band) == expected


# --- the page -------------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Elements of the page by tag, with attributes, and the text of every table row."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.rows: list[str] = []
        self._row: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append(" ".join(" ".join(self._row).split()))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self._row.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        def has(element: dict[str, str], key: str, value: str) -> bool:
            return value in element.get("class", "").split() if key == "class" else element.get(key) == value

        return [a for t, a in self.elements if t == tag and all(has(a, k.rstrip("_"), v) for k, v in attrs.items())]


def test_the_report_shows_timeline_plots_measurements_and_campaign(report_path: Path, recorded_run: Path) -> None:
    trace = RunRecorder.load(next((recorded_run / TRACES_DIR).glob("*.json")))
    page = Page(report_path.read_text())
    timelines = page.find("svg", class_="timeline")
    assert [t["data-dut"] for t in timelines] == trace.duts
    assert int(timelines[0]["data-events"]) == len(trace.events)
    assert [g["data-lane"] for g in page.find("g", class_="lane")] == list(LANES)
    plots = {p.get("data-title"): int(p["data-points"]) for p in page.find("svg", class_="plot")}
    assert plots["upload sizes"] == len(trace.uploads)
    assert plots["compression ratio (original / compressed)"] == sum(u.ratio is not None for u in trace.uploads)
    assert plots["energy per power state"] == len(trace.energy)
    assert plots["OTA progress"] == len(trace.ota)
    assert plots["Pac over the simulated day"] == sum("Pac" in r.values for r in trace.registers) > 10
    graded = {row.split()[1]: row.split()[-1] for row in page.rows
              if row.startswith("test_day::") and row.split()[-1] in ("pass", "marginal", "fail")}
    assert graded == {"compression_ratio": "pass", "average_current": "marginal", "uploads": "fail"}
    assert any(r.startswith("test_ota::test_resume xfailed") for r in page.rows)
    assert any(r.startswith("7 1 ") and REPLAY in r and "ack_loss" in r for r in page.rows)  # the reproducer
    assert not any(r.startswith(("5 ", "6 ")) for r in page.rows)  # runs without violations are only counted


def test_the_report_needs_no_network(report_path: Path) -> None:
    text = report_path.read_text()
    page = Page(text)
    assert not page.find("link") and not page.find("img") and not page.find("iframe")
    assert all("src" not in attrs for tag, attrs in page.elements if tag == "script")
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text)
    assert "@import" not in text and "url(" not in text


def test_report_html_command(recorded_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="ecowatt")
    add_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "out" / "run.html"
    args = parser.parse_args(["report", "html", str(recorded_run), "--out", str(out), "--title", "Nightly"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert "<title>Nightly</title>" in out.read_text()
    missing = parser.parse_args(["report", "html", str(tmp_path / "nowhere")])
    assert missing.func(missing) == 2


# --- in a browser ---------------------------------------------------------------------------------------------


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,2000", *args],
        capture_output=True, text=True, timeout=60, check=False)


def read_png(data: bytes) -> np.ndarray:
    """The pixels (height x width x 3) of an 8-bit RGB(A) PNG, as Chromium writes it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,), kind = struct.unpack(">I", data[offset:offset + 4]), data[offset + 4:offset + 8]
        chunk = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6) and header[12] == 0
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, stride + 1)
    pixels = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 1:  # sub: a running sum per channel
            line = line.reshape(width, bpp).cumsum(axis=0).ravel()
        elif kind == 2:  # up
            line = line + previous
        elif kind in (3, 4):  # average, Paeth: each byte depends on the one decoded left of it
            out, up = line.tolist(), previous.tolist()
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    out[i] = (out[i] + (a + b) // 2) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            line = np.array(out, np.int32)
        previous = line & 0xFF
        pixels[y] = previous
    return pixels.reshape(height, width, bpp)[:, :, :3]


def _coarse(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16) // 32, int(colour[3:5], 16) // 32, int(colour[5:7], 16) // 32)


def _region(png: np.ndarray, box: dict[str, int]) -> tuple[float, set[tuple[int, int, int]], np.ndarray]:
    """Share of non-white pixels in a box, its colours (coarsened) and the coarse pixels."""
    area = png[max(0, box["y"]):box["y"] + box["height"], max(0, box["x"]):box["x"] + box["width"]].reshape(-1, 3)
    inked = area[area.min(axis=1) < 235]
    coarse = inked // 32
    return len(inked) / max(len(area), 1), {tuple(int(v) for v in c) for c in np.unique(coarse, axis=0)}, coarse


def _count(coarse: np.ndarray, colours: set[tuple[int, int, int]]) -> int:
    return int(sum(np.all(coarse == np.array(c), axis=1).sum() for c in colours))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed")
def test_chromium_renders_the_timeline_and_plots(report_path: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = _chromium(tmp_path / "profile", "--dump-dom", f"--screenshot={shot}", report_path.resolve().as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert re.search(r'<body[^>]*data-rendered="yes"', done.stdout), "the page's script did not run"
    layout = json.loads(re.search(r'<pre id="layout" hidden="">(.*?)</pre>', done.stdout, re.S).group(1))
    timeline = next(box for box in layout if box["kind"] == "timeline")
    assert timeline["width"] >= 1000 and timeline["height"] > 100 and timeline["marks"] > 100
    plots = [box for box in layout if box["kind"] == "plot"]
    assert len(plots) >= 14 and all(box["width"] > 300 and box["marks"] >= 1 for box in plots)

    png = read_png(shot.read_bytes())
    assert png.shape == (2000, 1280, 3)
    ink, colours, _ = _region(png, timeline)
    assert ink > 0.05, f"the timeline is blank ({ink:.0%} ink)"
    lanes = {_coarse(c) for c in LANE_COLOURS.values()} & colours
    assert len(lanes) >= 4, "the timeline's lanes did not render in their colours"
    series = {_coarse(c) for c in SERIES_COLOURS}
    visible = [box for box in plots if box["y"] + box["height"] <= png.shape[0]]
    assert len(visible) >= 6
    for box in visible:  # inside the axes: the series' own colours, not just the frame and grid
        inner = {"x": box["x"] + 56, "y": box["y"] + 28, "width": box["width"] - 70, "height": box["height"] - 64}
        _, _, coarse = _region(png, inner)
        drawn = _count(coarse, series)
        assert drawn >= min(150, 5 * box["points"]), f"plot {box['title']!r} drew no data ({drawn} pixels)"
    ink, _, _ = _region(png, {"x": timeline["x"] + timeline["width"] + 8, "y": timeline["y"], "width": 20, "height": 600})
    assert ink < 0.01  # the checks tell a drawing from an empty page
