"""The run's report as one self-contained HTML page: opens from disk, no network (inline CSS, JS and SVG).

    path = write_report(Path("reports/20260101-120000-spec"))      # -> .../report.html
    html = render_report(load_run(run_dir))

Built from what a run leaves in its directory, each part optional:

* `report.json` (harness.report): scenarios with verdicts, measurements with limits, provenance;
* `junit.xml`: scenarios when there is no run record (a plain `pytest --junitxml` run);
* `traces/*.json` (harness.run_recorder): per scenario and DUT, the timeline of serial lines, Modbus
  transactions, HTTP requests, injected faults, power and OTA events; register values over the
  simulated day; upload sizes and compression ratios; energy per power state; OTA progress;
* `campaign.jsonl` (or `campaign.json` with a `runs` list): one run of a campaign per line, with its
  `seed`, `violations` (a list, or a count) and, for a violating run, the `shrunk` schedule and the
  `replay` command.

Measurements are shown pass / marginal / fail: marginal is inside the limits but within the marginal
band of one (the measurement's own `marginal` width when it has one, else MARGINAL_BAND of the span
between its limits, or of the one limit's magnitude).

Plots are SVG drawn here (no plotting library). Every plot carries `data-points` (the points drawn) and
each timeline `data-events`; a small script lists the page's plots and their boxes in `#layout` once it
ran, so a headless browser can check what rendered where.
"""

from __future__ import annotations

import html
import json
import math
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.report import RECORD_FILE, Measurement, ScenarioResult, parse_record
from harness.run_recorder import LANES, TRACES_DIR, RunRecorder, TimelineEvent
from protocol.errors import DocumentError

REPORT_FILE = "report.html"
JUNIT_FILE = "junit.xml"
CAMPAIGN_FILES = ("campaign.jsonl", "campaign.json")
MARGINAL_BAND = 0.10
TIMELINE_BINS = 600  # a lane with more events than this many bins is drawn as a density strip
MAX_CONSOLE_LINES = 5000  # per DUT in the console table (the newest)
WIDTH = 1180
STATUS_COLOURS = {"ok": None, "warn": "#e0a800", "error": "#c62828"}
LANE_COLOURS = {"serial": "#607d8b", "modbus": "#00897b", "http": "#1e63c4", "fault": "#c62828",
                "power": "#7b3fa0", "ota": "#ef6c00"}
SERIES_COLOURS = ("#1e63c4", "#ef6c00", "#2e7d32", "#7b3fa0", "#c62828", "#00897b", "#6d4c41", "#546e7a")
VERDICT_CLASSES = {"passed": "pass", "xfailed": "known", "skipped": "skip", "failed": "fail", "error": "fail",
                   "timed_out": "fail", "xpassed": "fail"}


# --- what a run directory holds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasurementRow:
    scenario: str
    measurement: Measurement
    marginal: float | None = None  # the measurement's own marginal band width, if it has one

    @property
    def grade(self) -> str:
        return grade(self.measurement, self.marginal)


@dataclass(frozen=True)
class CampaignRun:
    seed: str
    violations: int
    shrunk: str = ""
    replay: str = ""


@dataclass
class RunData:
    directory: Path
    record: dict[str, Any] | None = None  # report.json as written
    scenarios: list[ScenarioResult] = field(default_factory=list)
    measurements: list[MeasurementRow] = field(default_factory=list)
    traces: list[RunRecorder] = field(default_factory=list)
    campaign: list[CampaignRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # parts of the directory that could not be read


def grade(measurement: Measurement, marginal: float | None = None) -> str:
    """pass / marginal / fail (or info without limits); see the module docstring."""
    if measurement.verdict != "pass":
        return measurement.verdict
    low, high, value = measurement.low, measurement.high, measurement.value
    if marginal is None:
        span = (high - low) if low is not None and high is not None else abs(low if low is not None else high or 0)
        marginal = MARGINAL_BAND * span
    near_low = low is not None and value - low < marginal
    near_high = high is not None and high - value < marginal
    return "marginal" if near_low or near_high else "pass"


def load_run(directory: Path) -> RunData:
    """Everything readable in a run directory; unreadable parts are listed in `problems`."""
    run = RunData(Path(directory))
    record_path = run.directory / RECORD_FILE
    if record_path.is_file():
        try:
            data = record_path.read_bytes()
            record = parse_record(data)
            run.record = json.loads(data)
            run.scenarios = record.scenarios
            raw_scenarios = run.record.get("scenarios", []) if run.record else []
            for scenario, raw in zip(record.scenarios, raw_scenarios, strict=False):
                raw_measurements = raw.get("measurements", []) if isinstance(raw, Mapping) else []
                for measurement, doc in zip(scenario.measurements, raw_measurements, strict=False):
                    band = doc.get("marginal") if isinstance(doc, Mapping) else None
                    width = float(band) if isinstance(band, int | float) and not isinstance(band, bool) else None
                    run.measurements.append(MeasurementRow(scenario.name, measurement, width))
        except (OSError, DocumentError) as error:
            run.problems.append(f"{RECORD_FILE}: {error}")
    junit = run.directory / JUNIT_FILE
    if not run.scenarios and junit.is_file():
        try:
            run.scenarios = scenarios_from_junit(junit.read_bytes())
        except DocumentError as error:
            run.problems.append(f"{JUNIT_FILE}: {error}")
    traces = run.directory / TRACES_DIR
    for path in sorted(traces.glob("*.json")) if traces.is_dir() else ():
        try:
            run.traces.append(RunRecorder.load(path))
        except (OSError, DocumentError) as error:
            run.problems.append(f"{TRACES_DIR}/{path.name}: {error}")
    for name in CAMPAIGN_FILES:
        path = run.directory / name
        if path.is_file():
            try:
                run.campaign = parse_campaign(path.read_text(encoding="utf-8", errors="replace"))
            except DocumentError as error:
                run.problems.append(f"{name}: {error}")
            break
    return run


def scenarios_from_junit(data: bytes) -> list[ScenarioResult]:
    """Scenario verdicts from a JUnit XML file (pytest's)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise DocumentError(f"not XML: {error}", data[:100]) from None
    results = []
    for case in root.iter("testcase"):
        nodeid = "::".join(x for x in (case.get("classname", "").replace(".", "/") + ".py", case.get("name", "")) if x)
        verdict, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                verdict, reason = ("failed" if child.tag == "failure" else "error"), child.get("message", "")
            elif child.tag == "skipped":
                kind = child.get("type", "")
                verdict, reason = ("xfailed" if kind == "pytest.xfail" else "skipped"), child.get("message", "")
        try:
            duration = float(case.get("time", "0") or 0)
        except ValueError:
            duration = 0.0
        results.append(ScenarioResult(nodeid, verdict, duration if math.isfinite(duration) else 0.0,
                                      verdict not in ("failed", "error"), reason[:300]))
    return results


def parse_campaign(text: str) -> list[CampaignRun]:
    """Campaign runs from JSON lines (or one JSON document with `runs`)."""
    try:
        stripped = text.lstrip()
        if stripped.startswith("{") and "\n{" not in stripped.strip():
            doc = json.loads(stripped)
            docs = doc.get("runs", [doc]) if isinstance(doc, dict) else doc
        else:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError) as error:
        raise DocumentError(f"not JSON: {error}", text[:100]) from None
    runs = []
    for doc in docs if isinstance(docs, list) else []:
        if not isinstance(doc, dict):
            raise DocumentError("a campaign run must be an object", doc)
        violations = doc.get("violations", 0)
        count = len(violations) if isinstance(violations, list) else violations
        if isinstance(count, bool) or not isinstance(count, int):
            count = 0 if doc.get("ok", True) else 1
        shrunk = doc.get("shrunk") or doc.get("reproducer") or ""
        runs.append(CampaignRun(str(doc.get("seed", "?")), count,
                                shrunk if isinstance(shrunk, str) else json.dumps(shrunk, default=str),
                                str(doc.get("replay") or doc.get("command") or "")))
    return runs


# --- SVG ----------------------------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def time_ticks(span: float, count: int = 10) -> list[float]:
    """Ticks at round clock steps (a minute, a quarter hour, an hour...) over [0, span]."""
    step = next((s for s in TIME_STEPS if span / s <= count), TIME_STEPS[-1] * math.ceil(span / count / TIME_STEPS[-1]))
    return [i * float(step) for i in range(int(span // step) + 1)]


def clock_text(seconds: float) -> str:
    """Device seconds as h:mm, or h:mm:ss when not on a whole minute."""
    hours, rest = divmod(int(round(max(0.0, seconds))), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


class Scale:
    def __init__(self, low: float, high: float, start: float, end: float) -> None:
        self.low, self.high = low, (high if high > low else low + 1.0)
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def _colour(event: TimelineEvent) -> str:
    return STATUS_COLOURS.get(event.status) or LANE_COLOURS[event.lane]


def timeline_svg(events: Sequence[TimelineEvent], start: float, end: float, dut: str) -> str:
    """One DUT's lanes on one device-time axis: a mark per event (spans as bars), a density strip for
    lanes too busy to draw one by one."""
    lane_h, left, right, top = 26, 70, WIDTH - 10, 8
    x = Scale(start, end, left, right)
    height = top + lane_h * len(LANES) + 28
    by_lane: dict[str, list[TimelineEvent]] = defaultdict(list)
    for event in events:
        by_lane[event.lane].append(event)
    parts = [f'<svg class="timeline" data-dut="{_e(dut)}" data-events="{len(events)}" viewBox="0 0 {WIDTH} {height}" '
             f'width="{WIDTH}" height="{height}" role="img" aria-label="timeline of {_e(dut)}">']
    for index, lane in enumerate(LANES):
        y = top + index * lane_h
        lane_events = by_lane.get(lane, [])
        parts.append(f'<g class="lane" data-lane="{lane}" data-count="{len(lane_events)}">'
                     f'<rect x="{left}" y="{y}" width="{right - left}" height="{lane_h - 4}" fill="#f3f5f7"/>'
                     f'<text x="{left - 6}" y="{y + 16}" text-anchor="end" class="lbl">{lane}</text>')
        points = [e for e in lane_events if e.end is None]
        for event in (e for e in lane_events if e.end is not None):
            x0, x1 = x(event.t), x(min(event.end if event.end is not None else end, end))
            parts.append(f'<rect class="mark span" x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 2):.1f}" '
                         f'height="{lane_h - 10}" fill="{_colour(event)}" fill-opacity="0.35" stroke="{_colour(event)}">'
                         f'<title>{_e(clock_text(event.t - start))}-{_e(clock_text(min(event.end or end, end) - start))} '
                         f'{_e(event.label)} {_e(event.detail)}</title></rect>')
        if len(points) > TIMELINE_BINS:
            parts.append(_density(points, x, y, lane_h, start, end))
        else:
            for event in points:
                parts.append(f'<rect class="mark" x="{x(event.t) - 1:.1f}" y="{y + 1}" width="2.5" height="{lane_h - 6}" '
                             f'fill="{_colour(event)}"><title>{_e(clock_text(event.t - start))} {_e(event.label)}'
                             f'{(" — " + _e(event.detail)) if event.detail else ""}</title></rect>')
        parts.append("</g>")
    axis_y = top + lane_h * len(LANES)
    for tick in time_ticks(end - start):
        tx = x(start + tick)
        parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{axis_y}" stroke="#d0d5da" stroke-width="0.6"/>'
                     f'<text x="{tx:.1f}" y="{axis_y + 14}" text-anchor="middle" class="tick">{clock_text(tick)}</text>')
    parts.append(f'<text x="{right}" y="{axis_y + 26}" text-anchor="end" class="tick">device time (h:mm)</text></svg>')
    return "".join(parts)


def _density(points: Sequence[TimelineEvent], x: Scale, y: float, lane_h: int, start: float, end: float) -> str:
    bins: list[list[TimelineEvent]] = [[] for _ in range(TIMELINE_BINS)]
    width = (end - start) / TIMELINE_BINS or 1.0
    for event in points:
        bins[min(TIMELINE_BINS - 1, max(0, int((event.t - start) / width)))].append(event)
    most = max(len(b) for b in bins) or 1
    parts = []
    for index, members in enumerate(bins):
        if not members:
            continue
        worst = max(members, key=lambda e: ("ok", "warn", "error").index(e.status))
        h = 4 + (lane_h - 10) * len(members) / most
        x0 = x(start + index * width)
        parts.append(f'<rect class="mark bin" x="{x0:.1f}" y="{y + lane_h - 5 - h:.1f}" width="{max(x(start + width) - x(start), 1.5):.1f}" '
                     f'height="{h:.1f}" fill="{_colour(worst)}"><title>{len(members)} events from '
                     f'{_e(clock_text(index * width))}: {_e(worst.label)}</title></rect>')
    return "".join(parts)


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    kind: str = "line"  # line, step, bars, dots


def plot_svg(title: str, series: Sequence[Series], *, x_label: str, y_label: str, x_format: Any = None,
             height: int = 220, width: int = 380, y_zero: bool = True, plot_id: str = "") -> str:
    """A small chart of one or more series (lines, steps, bars or dots) with axes and a legend."""
    x_format = x_format or (lambda v: f"{v:g}")
    left, right, top, bottom = 52, width - 10, 26, height - 34
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    total = len(xs)
    ident = f' id="{_e(plot_id)}"' if plot_id else ""
    parts = [f'<svg class="plot"{ident} data-points="{total}" data-title="{_e(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
             f'<text x="{left}" y="15" class="ttl">{_e(title)}</text>'
             f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fafbfc" stroke="#d0d5da"/>']
    if not total:
        parts.append(f'<text x="{(left + right) / 2}" y="{(top + bottom) / 2}" text-anchor="middle" class="tick">no data</text></svg>')
        return "".join(parts)
    y_low, y_high = (min(0.0, min(ys)) if y_zero else min(ys)), max(ys)
    if y_high <= y_low:  # a flat series: centred, not drawn on the frame
        pad = abs(y_low) * 0.1 or 1.0
        y_low, y_high = y_low - pad, y_high + pad
    x_low, x_high = min(xs), max(xs)
    if x_high <= x_low:
        x_low, x_high = x_low - 1, x_high + 1
    sx, sy = Scale(x_low, x_high, left + 4, right - 4), Scale(y_low, y_high * 1.05, bottom, top)
    for tick in nice_ticks(y_low, y_high * 1.05, 4):
        parts.append(f'<line x1="{left}" x2="{right}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}" stroke="#e3e7eb"/>'
                     f'<text x="{left - 4}" y="{sy(tick) + 3:.1f}" text-anchor="end" class="tick">{tick:g}</text>')
    x_ticks = [t for t in time_ticks(x_high, 5) if t >= x_low] if x_format is clock_text else nice_ticks(x_low, x_high, 5)
    for tick in x_ticks:
        parts.append(f'<text x="{sx(tick):.1f}" y="{bottom + 13}" text-anchor="middle" class="tick">{_e(x_format(tick))}</text>')
    parts.append(f'<text x="{right}" y="{height - 4}" text-anchor="end" class="tick">{_e(x_label)}</text>'
                 f'<text x="12" y="{(top + bottom) / 2}" class="tick" transform="rotate(-90 12 {(top + bottom) / 2})" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    bar_w = max(1.5, min(14.0, (right - left) / max(1, max(len(s.points) for s in series)) * 0.6))
    for index, s in enumerate(series):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        pts = sorted(s.points)
        if s.kind == "bars":
            for px, py in pts:
                parts.append(f'<rect class="pt" x="{sx(px) - bar_w / 2:.1f}" y="{sy(py):.1f}" width="{bar_w:.1f}" '
                             f'height="{max(sy(y_low) - sy(py), 0.5):.1f}" fill="{colour}"><title>{_e(x_format(px))}: {py:g}</title></rect>')
            continue
        path = []
        for i, (px, py) in enumerate(pts):
            if s.kind == "step" and i:
                path.append(f"L{sx(px):.1f},{sy(pts[i - 1][1]):.1f}")
            path.append(f"{'M' if not i else 'L'}{sx(px):.1f},{sy(py):.1f}")
        if s.kind != "dots":
            parts.append(f'<path class="series" d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
        if s.kind == "dots" or len(pts) <= 120:
            for px, py in pts:
                parts.append(f'<circle class="pt" cx="{sx(px):.1f}" cy="{sy(py):.1f}" r="2.4" fill="{colour}">'
                             f'<title>{_e(x_format(px))}: {py:g}</title></circle>')
    if len(series) > 1:
        for index, s in enumerate(series):
            lx = left + 8 + index * 90
            parts.append(f'<rect x="{lx}" y="{top + 6}" width="10" height="10" fill="{SERIES_COLOURS[index % len(SERIES_COLOURS)]}"/>'
                         f'<text x="{lx + 14}" y="{top + 15}" class="tick">{_e(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def energy_svg(shares: Sequence[tuple[str, float, float, float]], dut: str) -> str:
    """Horizontal bars: charge (mAh) per power state, with its time and current. shares: (state, mAh,
    seconds, mA)."""
    row, left, width = 24, 110, 380
    height = 34 + row * max(1, len(shares))
    total = sum(s[1] for s in shares)
    parts = [f'<svg class="plot energy" data-points="{len(shares)}" data-title="energy per power state" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="energy per power state of {_e(dut)}"><text x="{left}" y="15" class="ttl">'
             f'charge per power state ({total:.3g} mAh)</text>']
    most = max((s[1] for s in shares), default=0.0) or 1.0
    for index, (state, mah, seconds, milliamps) in enumerate(sorted(shares, key=lambda s: -s[1])):
        y = 26 + index * row
        bar = (width - left - 70) * mah / most
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" class="tick">{_e(state)}</text>'
                     f'<rect class="pt" x="{left}" y="{y}" width="{max(bar, 1):.1f}" height="{row - 6}" '
                     f'fill="{SERIES_COLOURS[index % len(SERIES_COLOURS)]}"><title>{_e(state)}: {mah:.4g} mAh '
                     f'({seconds:.0f} s at {milliamps:g} mA)</title></rect>'
                     f'<text x="{left + max(bar, 1) + 4:.1f}" y="{y + 13}" class="tick">{mah:.3g} mAh</text>')
    if not shares:
        parts.append(f'<text x="{left}" y="40" class="tick">no data</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- the page -------------------------------------------------------------------------------------------------


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#fff}
header{background:#17324d;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .meta{opacity:.85;font-size:12.5px;margin-top:4px}
main{padding:12px 24px;max-width:1240px}
h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #d0d5da;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.cards{display:flex;gap:10px;flex-wrap:wrap}.card{border:1px solid #d0d5da;border-radius:6px;padding:8px 14px;min-width:90px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #e3e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:4px;padding:0 7px;font-weight:600;font-size:12px;color:#fff}
.pass{background:#2e7d32}.marginal{background:#e0a800;color:#1d2329}.fail{background:#c62828}.info,.skip{background:#78909c}
.known{background:#ef6c00}
.plots{display:flex;flex-wrap:wrap;gap:8px}
svg text.lbl{font-size:12px;fill:#37474f}svg text.tick{font-size:10.5px;fill:#546e7a}svg text.ttl{font-size:12.5px;font-weight:600;fill:#1d2329}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.controls label{margin-right:10px;font-size:12.5px}
pre.console{max-height:320px;overflow:auto;background:#0f1720;color:#d5dde5;padding:8px;font-size:12px}
pre.console .error{color:#ff8a80}pre.console .warn{color:#ffd54f}
.problems{color:#c62828}code{font-size:12px}
details>summary{cursor:pointer;font-weight:600}
"""

SCRIPT = """
(function(){
  document.querySelectorAll('.controls input[type=checkbox]').forEach(function(box){
    box.addEventListener('change', function(){
      var lane = box.dataset.lane;
      document.querySelectorAll('svg.timeline g.lane[data-lane="'+lane+'"] .mark').forEach(function(m){
        m.style.display = box.checked ? '' : 'none';});
    });
  });
  document.querySelectorAll('input.filter').forEach(function(input){
    input.addEventListener('input', function(){
      var pre = document.getElementById(input.dataset.target), text = input.value.toLowerCase();
      pre.querySelectorAll('span.line').forEach(function(line){
        line.style.display = line.textContent.toLowerCase().indexOf(text) < 0 ? 'none' : '';});
    });
  });
  var layout = [];
  document.querySelectorAll('svg.timeline, svg.plot').forEach(function(svg){
    var box = svg.getBoundingClientRect();
    layout.push({kind: svg.classList.contains('timeline') ? 'timeline' : 'plot',
                 title: svg.dataset.title || svg.dataset.dut || '',
                 points: parseInt(svg.dataset.points || svg.dataset.events || '0', 10),
                 marks: svg.querySelectorAll('.mark, .pt, path.series').length,
                 x: Math.round(box.left + window.scrollX), y: Math.round(box.top + window.scrollY),
                 width: Math.round(box.width), height: Math.round(box.height)});
  });
  document.getElementById('layout').textContent = JSON.stringify(layout);
  document.body.dataset.rendered = 'yes';
})();
"""


def _badge(grade_: str, text: str | None = None) -> str:
    return f'<span class="badge {grade_}">{_e(text or grade_)}</span>'


def _summary(run: RunData) -> str:
    counts: dict[str, int] = defaultdict(int)
    for scenario in run.scenarios:
        counts[scenario.verdict] += 1
    grades: dict[str, int] = defaultdict(int)
    for row in run.measurements:
        grades[row.grade] += 1
    cards = [("scenarios", len(run.scenarios))] + [(k.replace("_", " "), v) for k, v in counts.items()]
    cards += [(f"measurements {k}", v) for k, v in grades.items()]
    if run.campaign:
        cards += [("campaign runs", len(run.campaign)),
                  ("violating runs", sum(1 for r in run.campaign if r.violations))]
    return '<div class="cards" id="summary">' + "".join(
        f'<div class="card"><b>{v}</b>{_e(k)}</div>' for k, v in cards) + "</div>"


def _scenario_table(run: RunData) -> str:
    if not run.scenarios:
        return "<p>No scenario results in this directory.</p>"
    rows = []
    for s in run.scenarios:
        rows.append(f'<tr><td>{_e(s.name)}</td><td>{_badge(VERDICT_CLASSES.get(s.verdict, "info"), s.verdict.replace("_", " "))}'
                    f'</td><td class="num">{s.duration_s:.2f}</td><td>{_e(s.reason)}</td></tr>')
    return ('<table id="scenarios"><tr><th>scenario</th><th>verdict</th><th>time (s)</th><th>reason</th></tr>'
            + "".join(rows) + "</table>")


def _measurement_table(run: RunData) -> str:
    if not run.measurements:
        return "<p>No measurements recorded.</p>"
    rows = []
    for row in run.measurements:
        m = row.measurement
        rows.append(f'<tr data-grade="{row.grade}"><td>{_e(row.scenario)}</td><td>{_e(m.name)}</td>'
                    f'<td class="num">{m.value:.6g}</td><td>{_e(m.unit)}</td><td>{_e(m.limits_text())}</td>'
                    f'<td>{_badge(row.grade)}</td><td>{_e(m.description)}</td></tr>')
    return ('<table id="measurements"><tr><th>scenario</th><th>measurement</th><th>value</th><th>unit</th>'
            '<th>limits</th><th>verdict</th><th>about</th></tr>' + "".join(rows) + "</table>")


def _provenance(run: RunData) -> str:
    facts = (run.record or {}).get("provenance") or {}
    if not isinstance(facts, Mapping) or not facts:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
                   for k, v in facts.items() if v not in (None, "", []))
    return f'<details><summary>Provenance</summary><table id="provenance">{rows}</table></details>'


def _campaign(run: RunData) -> str:
    if not run.campaign:
        return ""
    violating = [r for r in run.campaign if r.violations]
    rows = "".join(f"<tr><td>{_e(r.seed)}</td><td class=\"num\">{r.violations}</td><td><code>{_e(r.shrunk)}</code></td>"
                   f"<td><code>{_e(r.replay)}</code></td></tr>" for r in violating)
    body = (f"<p>{len(run.campaign)} runs, {len(violating)} with invariant violations "
            f"({sum(r.violations for r in run.campaign)} violations in all).</p>")
    if rows:
        body += ('<table id="reproducers"><tr><th>seed</th><th>violations</th><th>shrunk reproducer</th>'
                 f"<th>replay</th></tr>{rows}</table>")
    return f'<section id="campaign"><h2>Campaign</h2>{body}</section>'


def _hours_of_day(seconds: float) -> str:
    return f"{int(seconds // 3600) % 24:02d}:{int(seconds % 3600 // 60):02d}"


def _dut_section(trace: RunRecorder, dut: str, index: int) -> str:
    events = [e for e in trace.events if e.dut in (dut, None)]
    times = [e.t for e in events] + [e.end for e in events if e.end is not None and math.isfinite(e.end)]
    times += [p.t for p in trace.registers if p.dut == dut] + [u.t for u in trace.uploads if u.dut == dut]
    start, end = (min(times), max(times)) if times else (0.0, 1.0)
    if end - start < 1.0:
        end = start + 1.0
    ident = f"d{index}"
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        counts[event.lane] += 1
    controls = "".join(
        f'<label><input type="checkbox" data-lane="{lane}" checked> <i style="background:{LANE_COLOURS[lane]}"></i>'
        f"{lane} ({counts.get(lane, 0)})</label>" for lane in LANES)
    parts = [f'<section class="dut" id="{ident}"><h3>{_e(dut)}</h3><div class="controls legend">{controls}'
             '<span><i style="background:#e0a800"></i>warning</span><span><i style="background:#c62828"></i>error/fault</span>'
             f"</div>{timeline_svg(events, start, end, dut)}<div class=\"plots\">"]
    points = [p for p in trace.registers if p.dut == dut]
    names: list[str] = []
    for point in points:
        names += [n for n in point.values if n not in names]
    for name in names:
        series = [((p.sim_time if p.sim_time is not None else p.t) / 3600.0, p.values[name]) for p in points if name in p.values]
        parts.append(plot_svg(f"{name} over the simulated day", [Series(name, series)], x_label="time of day (sim)",
                              y_label=name, x_format=lambda h: _hours_of_day(h * 3600.0),
                              y_zero=False, plot_id=f"{ident}-reg-{name}"))
    uploads = [u for u in trace.uploads if u.dut == dut]
    parts.append(plot_svg("upload sizes", [Series("bytes", [((u.t - start), float(u.size)) for u in uploads], "bars")],
                          x_label="device time (h:mm)", y_label="bytes", x_format=clock_text, plot_id=f"{ident}-upload-size"))
    ratios = [((u.t - start), u.ratio) for u in uploads if u.ratio is not None]
    parts.append(plot_svg("compression ratio (original / compressed)", [Series("ratio", ratios, "dots")],
                          x_label="device time (h:mm)", y_label="ratio (x)", x_format=clock_text, plot_id=f"{ident}-ratio"))
    shares = [(s.state, s.charge_mah, s.seconds, s.milliamps) for s in trace.energy if s.dut == dut]
    parts.append(energy_svg(shares, dut))
    ota = [o for o in trace.ota if o.dut == dut]
    if ota:
        parts.append(plot_svg("OTA progress", [Series("percent", [(o.t - start, o.percent) for o in ota], "step")],
                              x_label="device time (h:mm)", y_label="%", x_format=clock_text, plot_id=f"{ident}-ota"))
    parts.append("</div>")
    lines = [e for e in events if e.lane == "serial"][-MAX_CONSOLE_LINES:]
    console = "\n".join(f'<span class="line {e.status}">{clock_text(e.t - start):>8}  {_e(e.label)}</span>' for e in lines)
    parts.append(f'<details><summary>Serial console ({len(lines)} lines)</summary>'
                 f'<input class="filter" data-target="{ident}-console" placeholder="filter lines">'
                 f'<pre class="console" id="{ident}-console">{console}</pre></details>')
    faults = [e for e in events if e.lane == "fault"]
    if faults:
        rows = "".join(f"<tr><td class=\"num\">{clock_text(e.t - start)}</td><td>{_e(e.label)}</td><td>{_e(e.detail)}</td></tr>"
                       for e in faults[:500])
        parts.append(f"<details><summary>Injected faults ({len(faults)})</summary><table>{rows}</table></details>")
    parts.append("</section>")
    return "".join(parts)


def render_report(run: RunData, title: str | None = None) -> str:
    """The page (a str of HTML)."""
    record = run.record or {}
    found = record.get("provenance")
    provenance: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    heading = title or "EcoWatt HIL run"
    meta = " · ".join(_e(x) for x in (
        record.get("started_at"), provenance.get("profile") and f"profile {provenance.get('profile')}",
        provenance.get("seed") is not None and f"seed {provenance.get('seed')}",
        provenance.get("git_commit") and f"commit {str(provenance.get('git_commit'))[:10]}", str(run.directory)) if x)
    body = [f"<header><h1>{_e(heading)}</h1><div class=\"meta\">{meta}</div></header><main>", _summary(run)]
    if run.problems:
        body.append('<ul class="problems">' + "".join(f"<li>{_e(p)}</li>" for p in run.problems) + "</ul>")
    dut_index = 0
    traced = []
    for trace in run.traces:
        sections = []
        for dut in trace.duts:
            sections.append(_dut_section(trace, dut, dut_index))
            dut_index += 1
        info = ", ".join(f"{k} {v}" for k, v in trace.info.items())
        traced.append(f'<section class="trace"><h2>{_e(trace.scenario or "scenario")}</h2>'
                      f'<div class="meta">{_e(info)}</div>{"".join(sections)}</section>')
    body += traced
    body += [f"<h2>Scenarios</h2>{_scenario_table(run)}", f"<h2>Measurements</h2>{_measurement_table(run)}",
             _campaign(run), _provenance(run), '<pre id="layout" hidden></pre></main>']
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(heading)}</title><style>{CSS}</style></head><body>{''.join(body)}"
            f"<script>{SCRIPT}</script></body></html>")


def write_report(directory: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Render the run in `directory` to `out` (default `directory/report.html`)."""
    run = load_run(directory)
    path = out or Path(directory) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run, title), encoding="utf-8")
    return path

