"""docs/reliability-matrix.md, generated from the matrix's data (docs/reliability-matrix.json). Pure.

``render`` is the only way the doc is written: tests/chaos/test_matrix_doc.py checks that the committed doc
is ``render`` of the committed data, and that every recommendation's evidence holds in that data.
``merge`` folds a new measurement into the committed data cell by cell, so that re-measuring RabbitMQ (or one
fault) keeps the other cells and the command that measured them. ``write`` puts the data, the doc and the
README's "What loses tasks" table (``headline``) in place; ``python -m chaos.matrix_doc`` re-renders both
from the committed data (after a change to this file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.matrix import (
    CONCURRENCY,
    CONFIGS,
    DURATION_S,
    FAULTS,
    PAST_VISIBILITY_S,
    POOL_CHILD_VISIBILITY_S,
    SCALED_VISIBILITY_S,
    TASKS,
    TRIGGER,
    WORKERS,
)
from chaos.matrix_figures import signature, span
from lab.brokerview import BROKERS
from lab.profiles import ROOT

DOC_COMMAND = "lab chaos matrix --brokers redis,rabbitmq --repeat 2 --doc docs/reliability-matrix.md"


@dataclass(frozen=True)
class Evidence:
    cell: str
    has: str | None = None  # the cell shows this harm (a HARMS name)...
    lacks: str | None = None  # ...or does not

    def holds(self, cells: Mapping[str, Mapping[str, Any]]) -> bool | None:
        """True when every repeat shows the harm (``has``) or none does (``lacks``); False when that is
        contradicted; None when the cell was not measured cleanly (absent, n/a, invalid), or when its repeats
        disagree on this very harm. A cell unstable on another harm still answers for this one."""
        cell = cells.get(self.cell)
        if cell is None or cell["outcome"] in ("n/a", "invalid"):
            return None
        harm = self.has or self.lacks
        shown = [harm in signature(run) for run in cell["runs"]]
        if all(shown):
            return self.has is not None
        if not any(shown):
            return self.lacks is not None
        return None

    def describe(self) -> str:
        return f"`{self.cell}` {'shows ' + self.has if self.has else 'shows no ' + str(self.lacks)}"


@dataclass(frozen=True)
class Recommendation:
    """A setting, what goes wrong without it, and the evidence: a cell that shows the harm (``shown_by``)
    and one that, with the setting, does not (``avoided_by``)."""

    setting: str
    why: str
    harm: str
    shown_by: str
    avoided_by: str

    @property
    def evidence(self) -> tuple[Evidence, Evidence]:
        return Evidence(self.shown_by, has=self.harm), Evidence(self.avoided_by, lacks=self.harm)


_R = "redis"
RECOMMENDATIONS: tuple[Recommendation, ...] = (
    Recommendation(
        "`task_acks_late = True`",
        "with early acks a message is acknowledged when its task starts, so a worker that dies takes the task with it",
        "lost", f"{_R}/worker-main-sigkill/acks-early", f"{_R}/worker-main-sigkill/reference",
    ),
    Recommendation(
        "`task_reject_on_worker_lost = True` with acks_late",
        "without it a task whose pool child was killed is acknowledged (failed with WorkerLostError), not redelivered",
        "lost", f"{_R}/pool-child-sigkill/acks-late-no-reject", f"{_R}/pool-child-sigkill/reference",
    ),
    Recommendation(
        "Redis `visibility_timeout` above the longest task (and ETA/countdown)",
        "a message still running when the timeout expires is handed to a second worker and completes twice, "
        "with no fault at all",
        "twice", f"{_R}/none/visibility-shorter-than-task", f"{_R}/none/reference",
    ),
    Recommendation(
        "Redis `visibility_timeout` chosen, not left at 1 h",
        "the messages a killed worker held stay parked until the timeout expires: with the default, an hour",
        "parked", f"{_R}/worker-main-sigkill/visibility-default-1h", f"{_R}/worker-main-sigkill/reference",
    ),
    Recommendation(
        "Redis `visibility_timeout` above the longest broker outage or network partition too",
        "when workers are cut off for longer than the timeout, the sweep hands their running tasks to others "
        "and they complete twice (the price of a long timeout is the parked wait above)",
        # prefetch-4 has the same 4 s timeout as the reference, whose partition cell reads twice only now and then
        "twice", f"{_R}/network-partition/prefetch-4", f"{_R}/network-partition/visibility-default-1h",
    ),
    Recommendation(
        "Redis broker with persistence (`appendonly yes`)",
        "a broker that restarts without persistence comes back empty: every queued message is gone",
        "lost", f"{_R}/broker-restart-no-persistence/reference", f"{_R}/broker-restart-aof/reference",
    ),
)  # fmt: skip


def recommendation_failures(data: Mapping[str, Any]) -> list[str]:
    """Evidence a recommendation names that its data contradicts (an unmeasured cell is not a contradiction)."""
    cells = data["cells"]
    return [
        f"{rec.setting}: {ev.describe()} is not what was measured ({cells[ev.cell]['outcome']})"
        for rec in RECOMMENDATIONS
        for ev in rec.evidence
        if ev.holds(cells) is False
    ]


def merge(committed: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``new``'s cells over ``committed``'s, each cell pointing at the run that measured it (``run``: an index
    into ``runs``); runs no cell points at any more are dropped."""
    cells: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    for source in [s for s in (committed, new) if s]:
        for cell_id, cell in source["cells"].items():
            run = source["runs"][cell.get("run", 0)]
            if run not in runs:
                runs.append(run)
            cells[cell_id] = {**cell, "run": runs.index(run)}
    used = sorted({c["run"] for c in cells.values()})
    remap = {old: new_index for new_index, old in enumerate(used)}
    return {
        "runs": [runs[i] for i in used],
        "cells": {k: {**c, "run": remap[c["run"]]} for k, c in sorted(cells.items())},
    }


def _bold(text: str, harmful: bool) -> str:
    return f"**{text}**" if harmful else text


def cell_text(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return "not run"
    if cell["outcome"] == "n/a":
        return "n/a"
    runs = cell["runs"]
    if cell["outcome"] == "invalid":
        return "invalid: " + "; ".join(str(r.get("why", "?")) for r in runs if not r.get("valid"))
    if cell["outcome"] == "unstable":
        return "unstable: " + " / ".join(_figures_text([r]) for r in runs)
    return _figures_text(runs)


def _rounded(values: Sequence[Any]) -> list[Any]:
    return [None if v is None else round(float(v), 1) for v in values]


def _figures_text(runs: Sequence[Mapping[str, Any]]) -> str:
    def values(key: str) -> list[Any]:
        return [r.get(key) for r in runs]

    parts = [
        _bold(f"L{span(values('lost'))}", any(values("lost"))),
        f"R{span(values('reruns'))}",
        _bold(f"T{span(values('twice'))}", any(values("twice"))),
    ]
    if any(values("parked")):
        backs = [None if v is None else round(float(v)) for v in values("back_in_s")]
        if any(b is not None and b < 0 for b in backs):
            # Past its restore time and still held: no restore sweep has taken it back (yet).
            when = f"overdue {span([-b for b in backs if b is not None])}s"
            if any(values("restore_lock_s")):
                # kombu's sweep lock, left held by a worker killed inside a sweep, blocks every restore.
                when += f", sweep lock held {span(_rounded(values('restore_lock_s')))}s more"
        else:
            when = f"back +{span(backs)}s"
        parts.append(_bold(f"P{span(values('parked'))} {when}", True))
    if any(values("queued")):
        parts.append(_bold(f"Q{span(values('queued'))}", True))
    if any(v is not None for v in values("recovery_max_s")):
        parts.append(f"⟲{span(_rounded(values('recovery_max_s')))}s")
    return " ".join(parts)


def _record(n: int, run: Mapping[str, Any]) -> list[str]:
    v, m, b = run["versions"], run["machine"], run.get("budget", {})
    servers = ", ".join(str(v[k]) for k in BROKERS if v.get(k))
    libs = f"Python {v['python']}, Celery {v['celery']}, kombu {v['kombu']}, redis-py {v['redis-py']}"
    minutes = b.get("elapsed_s", 0) / 60
    return [
        f"{n}. `{run['command']}`, {run['date']}",
        f"   - {libs}; {servers or 'no broker server reached'}",
        f"   - {m['cpus']} CPUs, {m['memory_gb']} GiB, kernel {m['kernel']}; load average "
        f"{' '.join(map(str, m['load_avg']))} at the start, {' '.join(map(str, b.get('load_avg_end', [])))} at the end",
        f"   - {b.get('runs', '?')} runs (--repeat {run['repeat']}) in {minutes:.1f} min, "
        f"median {b.get('run_wall_s_median')} s a run",
    ]


def render(data: Mapping[str, Any]) -> str:
    cells = data["cells"]
    lines = [
        "# Reliability matrix: what each Celery setting loses under each fault",
        "",
        "<!-- generated by `lab chaos matrix --doc`; do not edit: chaos/matrix_doc.py renders it from "
        "docs/reliability-matrix.json -->",
        "",
        f"Regenerate: `{DOC_COMMAND}` (about 45 minutes on 2 cores; "
        "`--brokers`/`--faults`/`--configs` re-measure part of it and keep the other cells). "
        "Every cell is a chaos experiment (docs/chaos.md) built by chaos/matrix.py; `--json` keeps every "
        "repeat's journal.",
        "",
        "## How it was measured",
        "",
        f"- Each cell: {WORKERS} workers of {CONCURRENCY} prefork children, {TASKS} probe tasks of "
        f"{DURATION_S[0]:g}-{DURATION_S[1]:g} s, the fault after {TRIGGER['after_completions']} completions, "
        "a ledger counting every start and finish, the result backend on a redis-server of its own (outside "
        "the broker's fault domain).",
        f"- Time is scaled: the visibility timeout is {SCALED_VISIBILITY_S} s with a restore sweep every second "
        "(the reference's 4200 s over its 1 h time limit), except in `visibility-default-1h` (3600 s, kombu's "
        "own sweep) and `visibility-shorter-than-task` (1 s over tasks of 1.2-1.6 s), and raised to "
        f"{POOL_CHILD_VISIBILITY_S} s for `pool-child-sigkill`: Celery hears of a killed pool child 1-5 s late, "
        "and a shorter timeout would let Redis hand its task to another worker first (a race, not the setting). "
        f"A pause past the visibility timeout lasts it + {PAST_VISIBILITY_S} s.",
        "- Repeats are never averaged: a cell shows the range of its repeats when they agree on what happened "
        "(lost or not, twice or not, parked or not), and **unstable** with each repeat's figures when they do "
        "not. A repeat whose fault hit no in-flight work is **invalid**: it tested nothing.",
        "- Cell legend: **L** lost for good, **R** re-run (started more than once), **T** completed twice, "
        "**P** parked in the broker's unacked store (back when the visibility timeout expires, "
        "+seconds from the end of the run: a user waits that long; *overdue* when its time has passed and no "
        "restore sweep took it back), **Q** still queued, ⟲ redelivery time max.",
        "",
        "Measured by:",
        "",
    ]
    for n, run in enumerate(data["runs"], 1):
        lines += _record(n, run)
    for broker in BROKERS:
        mine = {k: c for k, c in cells.items() if k.startswith(f"{broker}/")}
        if not mine:
            lines += ["", f"## {broker}", "", f"Not measured: run `lab chaos matrix --brokers {broker} --doc ...`."]
            continue
        measured = [c for c in CONFIGS if any(k.endswith(f"/{c.id}") for k in mine)]
        lines += ["", f"## {broker}", "", "| fault \\ config | " + " | ".join(f"`{c.id}`" for c in measured) + " |"]
        lines.append("| --- " * (len(measured) + 1) + "|")
        for fault in FAULTS:
            row = [cell_text(mine.get(f"{broker}/{fault.id}/{c.id}")) for c in measured]
            if all(r == "not run" for r in row):
                continue
            lines.append(f"| `{fault.id}` | " + " | ".join(row) + " |")
        reasons: dict[str, list[str]] = {}
        for cell_id, cell in sorted(mine.items()):
            if cell["outcome"] == "n/a":
                reasons.setdefault(cell["why"], []).append(cell_id.split("/", 1)[1])
        if reasons:
            lines += ["", "Not applicable here:"]
            lines += [f"- {', '.join(f'`{c}`' for c in ids)}: {why}" for why, ids in reasons.items()]
        runs_of = sorted({c.get("run", 0) + 1 for c in mine.values() if c["outcome"] != "n/a"})
        lines += ["", f"Measured by run {', '.join(map(str, runs_of))} above."]
    lines += ["", "## Configs and faults", ""]
    lines += [f"- config `{c.id}`: {c.title}" for c in CONFIGS]
    lines += [f"- fault `{f.id}`: {f.title}" for f in FAULTS]
    lines += ["", "## Recommended settings", "", "Each names the cells that are its evidence, as measured above.", ""]
    for rec in RECOMMENDATIONS:
        shown = []
        for ev in rec.evidence:
            holds = ev.holds(cells)
            mark = {True: "as measured", False: "**contradicted by the measurement**", None: "not measured"}[holds]
            shown.append(f"{ev.describe()} ({cell_text(cells.get(ev.cell))}: {mark})")
        lines.append(f"- {rec.setting}: {rec.why}. Evidence: {'; '.join(shown)}.")
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- matrix-headline:start -->", "<!-- matrix-headline:end -->"


def headline(data: Mapping[str, Any]) -> str:
    """The README's table: each recommendation with its evidence cells as measured."""
    cells = data["cells"]
    rows = ["| setting | what goes wrong without it | evidence (cell: measured) |", "| --- | --- | --- |"]
    for rec in RECOMMENDATIONS:
        evidence = "<br>".join(f"`{ev.cell}`: {cell_text(cells.get(ev.cell))}" for ev in rec.evidence)
        rows.append(f"| {rec.setting} | {rec.why} | {evidence} |")
    return "\n".join(rows)


def render_readme(text: str, data: Mapping[str, Any]) -> str:
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {README_START} ... {README_END} section")
    return pattern.sub(lambda _: f"{README_START}\n{headline(data)}\n{README_END}", text)


DOC = ROOT / "docs" / "reliability-matrix.md"
README = ROOT / "README.md"


def data_path(doc: Path) -> Path:
    """Where a doc's data lives: beside it, ``.json`` (a ``.json`` path is the data itself)."""
    return doc if doc.suffix == ".json" else doc.with_suffix(".json")


def load_data(doc: Path) -> dict[str, Any] | None:
    """A doc's data, None when it has none yet; ValueError/OSError when it cannot be read."""
    path = data_path(doc)
    return json.loads(path.read_text()) if path.is_file() else None


def write(doc: Path, data: Mapping[str, Any]) -> None:
    """The data beside the doc, the doc, and, for the committed doc only, the README's table."""
    data_path(doc).write_text(json.dumps(data, indent=2) + "\n")
    doc.write_text(render(data))
    if doc.resolve() == DOC.resolve():
        README.write_text(render_readme(README.read_text(), data))


def main() -> None:
    data = load_data(DOC)
    if data is None:
        raise SystemExit(f"{data_path(DOC)} is missing: measure it with `{DOC_COMMAND}`")
    write(DOC, data)


if __name__ == "__main__":
    main()
