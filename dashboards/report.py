"""``lab report RUN_DIR``: the overview dashboard's panels as PNG files and one HTML page, without Grafana.

A Stack started with ``prometheus=True`` keeps Prometheus' TSDB in ``RUN_DIR/prometheus/tsdb``. The report
copies it (the run stays untouched), starts the Debian ``prometheus`` on the copy with nothing to scrape,
asks ``query_range`` for every target of the "Celery overview" dashboard over the run's time span, draws each
panel with matplotlib, and writes ``RUN_DIR/report/index.html`` with the images and the run's summary.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dashboards.build import all_dashboards
from dashboards.check import substitute
from lab.errors import StackError
from lab.prometheus import PromClient, Prometheus

SUMMARIES = ("summary.json", "dashboards-check.json", "load-summary.json", "chaos-summary.json")
_TOTAL_RATE = re.compile(r"sum\(rate\((\w+\{[^}]*\})\[\$__rate_interval\]\)\)(?: or vector\(0\))?")
UNIT_LABEL = {"ops": "per second", "reqps": "requests/s", "s": "seconds", "percentunit": "ratio", "short": ""}


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

    def stop(self) -> None:
        self.client.close()
        self.proc.stop(timeout=5)


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or "value"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _series(
    prom: _Prometheus, expr: str, start: float, end: float, step: float
) -> list[tuple[dict[str, str], list[float], list[float]]]:
    """A target's lines. A plain total rate, ``sum(rate(M{...}[$__rate_interval]))``, is drawn from the summed
    counter instead: rate() cannot see a series' first sample, so a burst that creates its series between two
    scrapes (the demo's) would draw as nothing. The exporter starts with the Stack, so every series starts
    at 0 and the sum's steps are the real increments (a reset would be negative and is dropped, as rate()
    would)."""
    if m := _TOTAL_RATE.fullmatch(expr.strip()):
        # "or vector(0)": before its first series exists the sum is 0, so the first jump counts too.
        result = prom.query_range(substitute(f"sum({m.group(1)}) or vector(0)"), start, end, step)
        points = [(float(t), float(v)) for t, v in result[0]["values"]] if result else []
        xs = [t1 - start for (_t0, _v0), (t1, _v1) in itertools.pairwise(points)]
        ys = [max(0.0, v1 - v0) / (t1 - t0) for (t0, v0), (t1, v1) in itertools.pairwise(points)]
        return [({}, xs, ys)] if xs else []
    # Like Grafana's $__rate_interval: a few steps, and never under four 1 s scrapes.
    window = f"{max(5, int(4 * step))}s"
    out = []
    for s in prom.query_range(substitute(expr, window), start, end, step):
        out.append((s["metric"], [float(t) - start for t, _v in s["values"]], [float(v) for _t, v in s["values"]]))
    return out


def render_panel(prom: _Prometheus, panel: dict[str, Any], start: float, end: float, out: Path) -> dict[str, Any]:
    # The OO API: no pyplot global state, no display backend. Imported here: matplotlib costs about 0.9 s of
    # import, which every `lab` command would pay otherwise.
    from matplotlib.figure import Figure

    step = max(1.0, (end - start) / 300)
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax = fig.subplots()
    series = 0
    for target in panel.get("targets", []):
        for labels, xs, ys in _series(prom, target["expr"], start, end, step):
            ax.plot(xs, ys, label=_legend(target.get("legendFormat", ""), labels), linewidth=1.4)
            series += 1
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    ax.set_title(panel["title"])
    ax.set_xlabel("seconds since the start of the run")
    ax.set_ylabel(UNIT_LABEL.get(unit, unit))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    fig.tight_layout()
    path = out / f"{_slug(panel['title'])}.png"
    fig.savefig(path)
    return {"title": panel["title"], "png": path.name, "series": series, "description": panel.get("description", "")}


def _summary(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    for name in SUMMARIES:
        for path in sorted(run_dir.glob(name)):
            try:
                return path.name, json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return None


def render_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/*.png and RUN_DIR/report/index.html; return the HTML path."""
    run_dir = run_dir.resolve()
    if not run_dir.is_dir():
        raise StackError(f"{run_dir} is not a directory: pass a run directory under results/")
    tsdb = find_tsdb(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    overview = all_dashboards()["celery-overview"]
    with tempfile.TemporaryDirectory(prefix="lab-report-") as work:
        prom = _Prometheus(tsdb, Path(work))
        try:
            start, end = prom.span()
            panels = [
                render_panel(prom, p, start, end, out)
                for p in overview["panels"]
                if p["type"] in {"timeseries", "stat"}
            ]
        finally:
            prom.stop()
    found = _summary(run_dir)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(overview['title'])}: {html.escape(run_dir.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}img{width:100%}"
        "pre{background:#f4f4f4;padding:8px;overflow:auto;max-height:400px}</style></head><body>",
        f"<h1>{html.escape(overview['title'])}: {html.escape(run_dir.name)}</h1>",
        f"<p>{end - start:.0f} s of data from {html.escape(str(tsdb))}; panels drawn from Prometheus "
        "query_range with every variable at All.</p>",
    ]
    if found:
        parts.append(f"<h2>Run summary ({html.escape(found[0])})</h2>")
        brief = {k: v for k, v in found[1].items() if k not in {"items", "latency"}}
        parts.append(f"<pre>{html.escape(json.dumps(brief, indent=2, default=str))}</pre>")
    for p in panels:
        parts.append(f"<h2>{html.escape(p['title'])}</h2><p>{html.escape(p['description'])}</p>")
        parts.append(f"<img src='{html.escape(p['png'])}' alt='{html.escape(p['title'])}'>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    (out / "panels.json").write_text(json.dumps(panels, indent=2))
    return page
