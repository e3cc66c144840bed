"""``lab report RUN_DIR``: the three Grafana dashboards drawn as PNG, one per dashboard, without Grafana.

A Stack started with ``prometheus=True`` keeps Prometheus' TSDB in ``RUN_DIR/prometheus/tsdb``. The report
copies it (the run stays untouched), starts the Debian ``prometheus`` on the copy with nothing to scrape,
asks it for every target of every dashboard built by dashboards/build.py over the run's time span, and draws
each dashboard as one PNG on a wall-clock (UTC) axis with the run's chaos faults as vertical markers. It
writes ``RUN_DIR/report/index.html`` (the images, the faults and the run's summary) and ``report.json``.

One image per dashboard, not per panel: every panel of a dashboard shares the same time axis, so a fault
marker lines up with its effect across panels, and an incident report gets one paste per dashboard.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dashboards.build import all_dashboards
from dashboards.check import substitute
from lab.errors import StackError
from lab.prometheus import PromClient, Prometheus

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

SUMMARIES = ("summary.json", "dashboards-check.json", "load-summary.json", "chaos-summary.json")
FAULT_METRIC = "celery_lab_faults_total"
FAULT_TIME_METRIC = "celery_lab_fault_time_seconds"  # the announcement's own time: exact, where counts are late
# Steps an engineer can read off an axis label ("tasks per 10 s"); the smallest giving at most MAX_POINTS.
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_POINTS = 150
LEGEND_CHARS = 40
MAX_ZERO_GROUPS = 3  # a grouped counter with more groups than this shows only those that increased
# Things counted in whole units: their axes get integer ticks.
WHOLE_NOUNS = {"workers", "users", "messages", "tasks", "executions", "faults", "redeliveries", "retries"}
# What one unit of each metric counts, for the axis labels; tests require every dashboard metric here.
NOUNS = {
    "celery_task_sent_total": "tasks",
    "celery_task_started_total": "tasks",
    "celery_task_succeeded_total": "tasks",
    "celery_task_failed_total": "tasks",
    "celery_task_retried_total": "retries",
    "celery_task_redelivered_total": "redeliveries",
    "celery_task_worker_lost_total": "executions",
    "celery_task_lost_gap": "tasks",
    "celery_queue_length": "messages",
    "celery_worker_up": "workers",
    "celery_worker_tasks_active": "tasks",
    "celery_lab_faults_total": "faults",
    "celery_lab_ledger_unfinished": "tasks",
    "celery_lab_ledger_duplicated": "tasks",
    "api_tasks_dispatched_total": "tasks",
    "http_requests_total": "requests",
    "locust_users": "users",
    "locust_requests_total": "requests",
    "locust_failures_total": "requests",
}
UNIT_NOUN = {"reqps": "requests", "s": "seconds", "percentunit": "percent"}
# Failures and retries are a few events beside hundreds of successes: on the panel's axis they would sit on
# zero, so a panel that also draws other counters gives them an axis of their own, below.
_MINOR = re.compile(r"_(?:failed|retried|failures)_total$")
# sum [by (L)] (rate|increase(M{...}[$__rate_interval])) [or vector(0)]: drawn from the counter itself.
_COUNTER_SUM = re.compile(
    r"sum(?:\s+by\s*\((?P<by>[\w\s,]*)\))?\s*\(\s*(?P<fn>rate|increase)\("
    r"(?P<selector>(?P<metric>[A-Za-z_:][\w:]*)(?:\{[^}]*\})?)\[\$__rate_interval\]\)\s*\)"
    r"(?P<zero>\s+or\s+vector\(0\))?"
)
Kind = Literal["rate", "count", "value"]


@dataclass(frozen=True)
class TargetPlot:
    """One dashboard target as the report draws it.

    ``rate`` and ``count`` targets are total rates or increases of a counter. They are drawn from the
    counter's own samples, per step: a counter's steps are its real increments, whole numbers of events, where
    rate() and increase() extrapolate to the window's edges (1.33 executions) and cannot see the first sample
    of a series that a burst created between two scrapes. ``rate`` divides by the step (per second, as the
    panel's unit says); ``count`` is events per step, as increase() panels count them."""

    expr: str
    legend: str
    kind: Kind
    noun: str
    selector: str = ""  # rate/count: the counter and its matchers, variables unsubstituted
    by: tuple[str, ...] = ()
    zero: bool = False  # "or vector(0)": a zero line when no series exists
    minor: bool = False

    def label(self, step: float) -> str:
        if self.kind == "rate":
            return f"{self.noun}/s"
        if self.kind == "count":
            return f"{self.noun} per {step:g} s"
        return self.noun


@dataclass(frozen=True)
class PanelPlot:
    dashboard: str
    row: str
    title: str
    description: str
    unit: str
    targets: tuple[TargetPlot, ...]


@dataclass(frozen=True)
class FaultMark:
    at: float  # epoch seconds
    kind: str
    target: str
    count: int = 1
    source: Literal["journal", "announcement", "counter"] = "counter"

    def short(self) -> str:
        # "w1@lab-72d92deca24d/pool-child" -> "w1/pool-child": the hostname suffix is the same on every target.
        target = re.sub(r"@[^/]*", "", self.target)
        return f"{self.kind} {target}" + (f" x{self.count}" if self.count > 1 else "")


@dataclass
class Line:
    """A drawn series: x are step end times (epoch), y its values (NaN where it has none)."""

    legend: str
    xs: list[float]
    ys: list[float]
    target: TargetPlot
    total: float | None = None  # rate/count: the events over the run


@dataclass
class PanelData:
    panel: PanelPlot
    lines: list[Line] = field(default_factory=list)


# --- dashboard definitions -> what to draw (pure) ---------------------------------------------------------
def noun_for(expr: str, unit: str) -> str:
    if unit in UNIT_NOUN:
        return UNIT_NOUN[unit]
    nouns = {NOUNS[name] for name in re.findall(r"[A-Za-z_:][\w:]*", expr) if name in NOUNS}
    return nouns.pop() if len(nouns) == 1 else "value"


def target_plot(expr: str, legend: str, unit: str) -> TargetPlot:
    noun = noun_for(expr, unit)
    if m := _COUNTER_SUM.fullmatch(expr.strip()):
        by = tuple(x.strip() for x in (m.group("by") or "").split(",") if x.strip())
        return TargetPlot(
            expr=expr,
            legend=legend,
            kind="rate" if m.group("fn") == "rate" else "count",
            noun=noun,
            selector=m.group("selector"),
            by=by,
            zero=bool(m.group("zero")) or not by,
            minor=bool(_MINOR.search(m.group("metric"))),
        )
    return TargetPlot(expr=expr, legend=legend, kind="value", noun=noun)


def plot_specs(dashboard: dict[str, Any]) -> list[PanelPlot]:
    """The panels of one Grafana dashboard JSON (dashboards/build.py's) in their order, with the row each sits in."""
    out, row = [], ""
    for panel in dashboard.get("panels", []):
        if panel["type"] == "row":
            row = panel["title"]
            continue
        if panel["type"] not in {"timeseries", "stat"}:
            continue
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        targets = tuple(target_plot(t["expr"], t.get("legendFormat", ""), unit) for t in panel.get("targets", []))
        out.append(PanelPlot(dashboard["title"], row, panel["title"], panel.get("description", ""), unit, targets))
    return out


def nice_step(span: float) -> float:
    return float(next((s for s in NICE_STEPS if span / s <= MAX_POINTS), NICE_STEPS[-1]))


def axis_label(targets: Iterable[TargetPlot], step: float) -> str:
    """The y axis label of targets drawn on one axis: a unit each, joined when they differ."""
    labels = list(dict.fromkeys(t.label(step) for t in targets))
    return " | ".join(labels)


def split_minor(lines: Sequence[Line], ratio: float = 0.25) -> tuple[list[Line], list[Line]]:
    """(main, minor): failure and retry lines go to an axis of their own when the panel's other counters
    peak above them by more than 1/ratio, i.e. when they would be flat on a shared axis."""
    minor = [ln for ln in lines if ln.target.minor]
    main = [ln for ln in lines if not ln.target.minor]
    if not minor or not main or any(ln.target.kind == "value" for ln in main):
        return list(lines), []
    if _peak(minor) >= ratio * _peak(main):
        return list(lines), []
    return main, minor


def _peak(lines: Iterable[Line]) -> float:
    return max((y for ln in lines for y in ln.ys if not math.isnan(y)), default=0.0)


def legend_text(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat. A label the series lacks shows as "?", an empty one (the exporter's
    ``failed{exception=""}`` placeholder at 0) as "(empty)"; a series with no labels at all is the
    "or vector(0)" stand-in for series that do not exist (yet)."""
    if not {k: v for k, v in labels.items() if k != "__name__"} and re.search(r"\{\{", fmt):
        return "(none)"

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        return labels.get(name) or ("(empty)" if name in labels else "?")

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", value, fmt).strip() or "value"


# --- counters -> increments (pure) -------------------------------------------------------------------------
def _increase(prev: float, value: float) -> float:
    """A counter's increase from ``prev``; a value below it is a reset, counting from 0 again (as rate())."""
    return value - prev if value >= prev else value


def counter_steps(
    grid: Sequence[float], series: Iterable[tuple[dict[str, str], Sequence[tuple[float, float]]]], by: Sequence[str]
) -> dict[tuple[str, ...], list[float]]:
    """Per ``by`` group, each step's increase summed over its counters (step-aligned samples on ``grid``).

    A series present at the first step has a history before the data starts, so its first value is only a
    baseline; one that appears later was created since the previous step, counting from 0, so its first value
    is an increase. A value below the previous one is a reset: it counts from 0 again, as rate() assumes."""
    # Prometheus echoes the step times back as decimal strings: compare at its millisecond resolution.
    index = {round(t, 3): i for i, t in enumerate(grid)}
    out: dict[tuple[str, ...], list[float]] = {}
    for labels, samples in series:
        key = tuple(labels.get(b, "") for b in by)
        steps = out.setdefault(key, [0.0] * len(grid))
        prev: float | None = None
        for t, v in samples:
            i = index.get(round(t, 3))
            if i is None or math.isnan(v):
                continue
            if prev is None:
                prev = v if i == 0 else 0.0
            steps[i] += _increase(prev, v)
            prev = v
    return out


def fault_marks(
    series: Iterable[tuple[dict[str, str], Sequence[tuple[float, float]]]], start: float, end: float
) -> list[FaultMark]:
    """Where ``celery_lab_faults_total{fault,target}`` went up, from its raw samples. The exporter creates a
    series at its first fault, so a first sample counts as its value; a mark is at most one scrape after the
    announcement it counts."""
    marks = []
    for labels, samples in series:
        prev = 0.0
        for t, v in samples:
            inc = _increase(prev, v)
            prev = v
            if inc >= 1 and start <= t <= end:
                marks.append(FaultMark(t, labels.get("fault", "?"), labels.get("target", "?"), round(inc)))
    return sorted(marks, key=lambda m: m.at)


def announced_marks(
    series: Iterable[tuple[dict[str, str], Sequence[tuple[float, float]]]], start: float, end: float
) -> list[FaultMark]:
    """Fault times from ``celery_lab_fault_time_seconds{fault,target}``: each value it took is the time of an
    announcement (two of one fault and target within one scrape show as the later one)."""
    marks = []
    for labels, samples in series:
        seen: set[float] = set()
        for _t, v in samples:
            if math.isnan(v) or v in seen or not start <= v <= end:
                continue
            seen.add(v)
            marks.append(FaultMark(v, labels.get("fault", "?"), labels.get("target", "?"), source="announcement"))
    return sorted(marks, key=lambda m: m.at)


def journal_marks(run_dir: Path) -> list[FaultMark]:
    """Fault times from chaos journals (``journal.json``) in the run directory: exact, where the counter's are
    a scrape late."""
    marks = []
    for path in sorted(run_dir.glob("journal.json")) + sorted(run_dir.glob("*/journal.json")):
        try:
            faults = json.loads(path.read_text()).get("faults", [])
        except (OSError, ValueError, AttributeError):
            continue
        for f in faults:
            if isinstance(f, dict) and isinstance(f.get("at_epoch"), int | float):
                marks.append(FaultMark(float(f["at_epoch"]), str(f["kind"]), str(f["target"]), source="journal"))
    return marks


def merge_marks(journal: Sequence[FaultMark], counter: Sequence[FaultMark], late_s: float) -> list[FaultMark]:
    """The journal's marks, and the counter's that no journal fault explains (same fault and target, counted
    at most ``late_s`` after it): faults announced outside any journaled experiment."""
    unexplained = [
        c
        for c in counter
        if not any(j.kind == c.kind and j.target == c.target and -1 <= c.at - j.at <= late_s for j in journal)
    ]
    return sorted([*journal, *unexplained], key=lambda m: m.at)


# --- Prometheus --------------------------------------------------------------------------------------------
def find_tsdb(run_dir: Path) -> Path:
    found = sorted(run_dir.glob("prometheus/tsdb")) + sorted(run_dir.glob("*/prometheus/tsdb"))
    if len(found) > 1:
        choices = ", ".join(str(p.parent.parent) for p in found[:5])
        raise StackError(f"{run_dir} holds several runs' Prometheus data: pass one of {choices}")
    if not found:
        raise StackError(
            f"no Prometheus data under {run_dir} (expected prometheus/tsdb): run with a Stack started with "
            "prometheus=True, e.g. `lab dashboards check`"
        )
    return found[0]


class _Prometheus:
    """A throwaway Prometheus (the Stack's own member, lab/prometheus.py) serving a copy of a run's TSDB."""

    def __init__(self, tsdb: Path, work: Path) -> None:
        data = work / "tsdb"
        shutil.copytree(tsdb, data, ignore=shutil.ignore_patterns("lock"))
        member = Prometheus(work, rule_files=[], jobs=(), tsdb=data, retention="3650d")
        self.proc = member.start(work / "prometheus.log", ready_timeout=60)
        self.url = member.url
        self.client = PromClient(member.url)

    def span(self) -> tuple[float, float]:
        lo, hi = self.client.tsdb_span()
        if hi <= lo:
            raise StackError("the run's Prometheus data holds no samples")
        return lo, hi

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.client.query_range_raw(expr, start, end, step)

    def raw_samples(self, selector: str, start: float, end: float) -> list[dict[str, Any]]:
        """Every stored sample of ``selector`` in [start, end], at its scrape time (a range-vector query)."""
        return self.client.query(f"{selector}[{math.ceil(end - start) + 1}s]", at=end)

    def stop(self) -> None:
        self.client.close()
        self.proc.stop(timeout=5)


def _samples(series: dict[str, Any]) -> list[tuple[float, float]]:
    return [(float(t), float(v)) for t, v in series["values"]]


def _grid(start: float, end: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((end - start) // step) + 1)]


def panel_data(prom: _Prometheus, panel: PanelPlot, start: float, step: float, grid: list[float]) -> PanelData:
    data = PanelData(panel)
    # Like Grafana's $__rate_interval: a few steps, and never under four 1 s scrapes.
    window = f"{max(5, int(4 * step))}s"
    for target in panel.targets:
        if target.kind == "value":
            for s in prom.query_range(substitute(target.expr, window), start, grid[-1], step):
                values = {round(t, 3): v for t, v in _samples(s)}
                ys = [values.get(round(t, 3), math.nan) for t in grid]
                data.lines.append(Line(legend_text(target.legend, s["metric"]), grid, ys, target))
            continue
        raw = prom.query_range(substitute(target.selector), start, grid[-1], step)
        groups = counter_steps(grid, [(s["metric"], _samples(s)) for s in raw], target.by)
        if not groups and target.zero:
            groups = {(): [0.0] * len(grid)}
        if len(groups) > MAX_ZERO_GROUPS:
            # Seven task names at "0 in all" bury the one that was redelivered; a few (worker: 0) inform.
            groups = {k: v for k, v in groups.items() if sum(v)} or groups
        for key, incs in sorted(groups.items()):
            # The first step has no previous one to increase from.
            ys = [math.nan, *(v / step if target.kind == "rate" else v for v in incs[1:])]
            # The "or vector(0)" stand-in has no key; a real series without the label shows it as "?".
            labels = dict(zip(target.by, key, strict=False))
            line = Line(legend_text(target.legend, labels), grid, ys, target)
            line.total = sum(incs)
            data.lines.append(line)
    return data


# --- drawing -----------------------------------------------------------------------------------------------
def _when(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _fit(text: str, width: int = LEGEND_CHARS) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width - width // 2) :]


def _draw_lines(ax: Axes, lines: Sequence[Line], step: float, targets: Sequence[TargetPlot]) -> None:
    """``targets`` name the unit when there is no line to take it from."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    bottom: list[float] | None = None
    for ln in lines:
        xs = [_when(t) for t in ln.xs]
        # Totals in the legend: the exact figure an incident report quotes, which no axis gives.
        if ln.total is not None:
            legend = f"{_fit(ln.legend)}: {ln.total:g} in all"
        elif any(not math.isnan(y) for y in ln.ys):
            legend = f"{_fit(ln.legend)}: max {max(y for y in ln.ys if not math.isnan(y)):.3g}"
        else:
            legend = f"{_fit(ln.legend)}: no data"
        if ln.target.kind == "count":
            # Events per step are bars over (t - step, t], stacked: they add up.
            heights = [0.0 if math.isnan(y) else y for y in ln.ys]
            base = bottom or [0.0] * len(heights)
            ax.bar(xs, heights, width=-step / 86400, align="edge", bottom=base, label=legend, alpha=0.85)
            bottom = [b + h for b, h in zip(base, heights, strict=True)]
        elif ln.target.kind == "rate":
            ax.plot(xs, ln.ys, drawstyle="steps-pre", label=legend, linewidth=1.3)
        else:
            ax.plot(xs, ln.ys, label=legend, linewidth=1.3)
    units = {ln.target.noun for ln in lines}
    if units == {"percent"}:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    elif all(
        ln.target.kind == "count" or (ln.target.kind == "value" and ln.target.noun in WHOLE_NOUNS) for ln in lines
    ):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(axis_label([ln.target for ln in lines] or targets, step), fontsize=8)
    # A flat zero (no failures) reads as zero on 0..1, not as a line in the middle of an arbitrary scale.
    ax.set_ylim(bottom=0, top=None if _peak(lines) > 0 else 1)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.02), fontsize=7, frameon=False, borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")


def _time_axis(ax: Axes, start: float, end: float, labelled: bool) -> None:
    from matplotlib import dates as mdates

    ax.set_xlim(_when(start), _when(end))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=4, maxticks=8))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    ax.tick_params(axis="both", labelsize=7)
    if labelled:
        ax.set_xlabel("time (UTC)", fontsize=8)
    else:
        ax.tick_params(axis="x", labelbottom=False)


def _mark_faults(ax: Axes, faults: Sequence[FaultMark], tagged: bool) -> None:
    # Tags only (F1, F2...): the figure's header spells each one out, and a panel's own text stays readable.
    for i, f in enumerate(faults, 1):
        ax.axvline(_when(f.at), color="crimson", linestyle="--", linewidth=1, alpha=0.8)
        if tagged:
            ax.annotate(
                f"F{i}",
                xy=(_when(f.at), 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 1),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                fontweight="bold",
                color="crimson",
            )


def _draw_panel(
    cell: SubFigure, data: PanelData, start: float, end: float, step: float, faults: Sequence[FaultMark]
) -> None:
    # Fixed margins, not a layout engine: every panel's time axis then spans the same pixels as the others in
    # its column, so a moment lines up down the page; the legend has the right third.
    cell.subplots_adjust(left=0.085, right=0.68, top=0.86, bottom=0.15, hspace=0.12)
    main, minor = split_minor(data.lines)
    if minor:
        top, bottom = cell.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
        axes = [(top, main), (bottom, minor)]
    else:
        axes = [(cell.subplots(), main)]
    for i, (ax, lines) in enumerate(axes):
        _draw_lines(ax, lines, step, data.panel.targets)
        _time_axis(ax, start, end, labelled=i == len(axes) - 1)
        _mark_faults(ax, faults, tagged=i == 0)
    if minor:
        axes[1][0].text(
            0.99,
            0.95,
            "failures and retries: own scale",
            transform=axes[1][0].transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="dimgrey",
        )
    axes[0][0].set_title(data.panel.title, fontsize=10, loc="left", fontweight="bold", pad=10)


def draw_dashboard(
    title: str,
    panels: Sequence[PanelData],
    start: float,
    end: float,
    step: float,
    faults: Sequence[FaultMark],
    run_name: str,
) -> Figure:
    # The OO API: no pyplot global state, no display backend. Imported here: matplotlib costs about 0.9 s of
    # import, which every `lab` command would pay otherwise.
    from matplotlib.figure import Figure

    rows: dict[str, list[PanelData]] = {}
    for p in panels:
        rows.setdefault(p.panel.row, []).append(p)
    lines_per_row = [math.ceil(len(ps) / 2) for ps in rows.values()]
    panel_h, band_h = 3.2, 0.35
    header_h = 0.75 + 0.17 * (len(faults) or 1)
    heights = [header_h] + [band_h + n * panel_h for n in lines_per_row]
    fig = Figure(figsize=(16, sum(heights)), dpi=100)
    header, *sections = fig.subfigures(len(heights), 1, height_ratios=heights)

    def at(inches: float) -> float:  # a header line's position, inches from its top
        return 1 - inches / header_h

    span = f"{_when(start):%Y-%m-%d %H:%M:%S} to {_when(end):%H:%M:%S} UTC: {end - start:.0f} s, steps of {step:g} s"
    header.text(0.01, at(0.12), f"{title}: {run_name}", fontsize=15, fontweight="bold", va="top")
    header.text(0.01, at(0.45), span, fontsize=9, va="top", color="dimgrey")
    for i, f in enumerate(faults, 1):
        where = {
            "journal": "the chaos journal",
            "announcement": f"its announcement ({FAULT_TIME_METRIC})",
        }.get(f.source, f"the first scrape counting it ({FAULT_METRIC})")
        line = f"F{i}  {_when(f.at):%H:%M:%S} UTC  {f.short()}  (target {f.target}; time of {where})"
        header.text(0.01, at(0.7 + 0.17 * (i - 1)), line, fontsize=8.5, va="top", color="crimson")
    if not faults:
        header.text(0.01, at(0.7), "no faults announced in this run", fontsize=8.5, va="top", color="dimgrey")
    for section, (row, ps), n in zip(sections, rows.items(), lines_per_row, strict=True):
        band, body = section.subfigures(2, 1, height_ratios=[band_h, n * panel_h])
        band.set_facecolor("#eef0f3")
        band.text(0.01, 0.5, row, fontsize=11, fontweight="bold", va="center", color="#333")
        cells = list(body.subfigures(n, 2).flat)
        for cell, p in zip(cells, ps, strict=False):
            _draw_panel(cell, p, start, end, step, faults)
    return fig


# --- the report --------------------------------------------------------------------------------------------
def _summary(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    for name in SUMMARIES:
        for path in sorted(run_dir.glob(name)):
            try:
                return path.name, json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return None


def _page(run_dir: Path, tsdb: Path, report: dict[str, Any], panels: dict[str, list[PanelPlot]]) -> str:
    esc = html.escape
    start, end = report["start"], report["end"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lab report: {esc(run_dir.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1600px;margin:auto}img{width:100%}"
        "pre{background:#f4f4f4;padding:8px;overflow:auto;max-height:400px}td,th{padding:2px 10px;text-align:left}"
        "dt{font-weight:bold}</style></head><body>",
        f"<h1>lab report: {esc(run_dir.name)}</h1>",
        f"<p>{_when(start):%Y-%m-%d %H:%M:%S} to {_when(end):%H:%M:%S} UTC ({end - start:.0f} s) from "
        f"{esc(str(tsdb))}; every variable at All. Counters are drawn per {report['step']:g} s step from their "
        "own samples: whole events, not rate()'s extrapolation.</p>",
    ]
    if report["faults"]:
        parts.append(
            "<h2>Faults</h2><table><tr><th></th><th>time (UTC)</th><th>fault</th><th>target</th><th>from</th></tr>"
        )
        for i, f in enumerate(report["faults"], 1):
            when = _when(f["at"]).isoformat(timespec="milliseconds")[11:23]
            parts.append(
                f"<tr><td>F{i}</td><td>{when}</td><td>{esc(f['kind'])}</td>"
                f"<td>{esc(f['target'])}</td><td>{esc(f['source'])}</td></tr>"
            )
        parts.append("</table>")
    if found := _summary(run_dir):
        parts.append(f"<h2>Run summary ({esc(found[0])})</h2>")
        brief = {k: v for k, v in found[1].items() if k not in {"items", "latency"}}
        parts.append(f"<pre>{esc(json.dumps(brief, indent=2, default=str))}</pre>")
    for d in report["dashboards"]:
        parts.append(f"<h2>{esc(d['title'])}</h2><img src='{esc(d['png'])}' alt='{esc(d['title'])}'><dl>")
        for p in panels[d["uid"]]:
            parts.append(f"<dt>{esc(p.title)}</dt><dd>{esc(p.description)}</dd>")
        parts.append("</dl>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/<dashboard>.png, index.html and report.json; return the HTML path."""
    run_dir = run_dir.resolve()
    if not run_dir.is_dir():
        raise StackError(f"{run_dir} is not a directory: pass a run directory under results/")
    tsdb = find_tsdb(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    specs = {uid: plot_specs(d) for uid, d in all_dashboards().items()}
    titles = {uid: d["title"] for uid, d in all_dashboards().items()}
    with tempfile.TemporaryDirectory(prefix="lab-report-") as work:
        prom = _Prometheus(tsdb, Path(work))
        try:
            start, end = prom.span()
            step = nice_step(end - start)
            grid = _grid(start, end, step)
            counted = fault_marks(
                [(s["metric"], _samples(s)) for s in prom.raw_samples(FAULT_METRIC, start, end)], start, end
            )
            announced = announced_marks(
                [(s["metric"], _samples(s)) for s in prom.raw_samples(FAULT_TIME_METRIC, start, end)], start, end
            )
            data = {uid: [panel_data(prom, p, start, step, grid) for p in ps] for uid, ps in specs.items()}
        finally:
            prom.stop()
    # The journal's times, else the announcements' own, else (an exporter without the time gauge) the counts'.
    exact = merge_marks(journal_marks(run_dir), announced, late_s=1.0)
    faults = merge_marks(exact, counted, late_s=10.0)
    report: dict[str, Any] = {"start": start, "end": end, "step": step, "faults": [asdict(f) for f in faults]}
    report["dashboards"] = []
    for uid, panels in data.items():
        fig = draw_dashboard(titles[uid], panels, start, end, step, faults, run_dir.name)
        png = out / f"{uid}.png"
        fig.savefig(png)
        report["dashboards"].append(
            {
                "uid": uid,
                "title": titles[uid],
                "png": png.name,
                "panels": [
                    {
                        "title": p.panel.title,
                        "row": p.panel.row,
                        "series": len(p.lines),
                        "with_data": sum(any(not math.isnan(y) for y in ln.ys) for ln in p.lines),
                        "totals": {ln.legend: ln.total for ln in p.lines if ln.total is not None},
                        "ylabel": axis_label(p.panel.targets, step),
                    }
                    for p in panels
                ],
            }
        )
    (out / "report.json").write_text(json.dumps(report, indent=2))
    page = out / "index.html"
    page.write_text(_page(run_dir, tsdb, report, specs))
    return page
