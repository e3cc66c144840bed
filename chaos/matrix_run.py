"""Run the reliability matrix: every selected cell ``repeat`` times on shared Stacks, with live progress,
then each cell's figures and the record a published measurement needs (versions, machine, command, time)."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from chaos.experiment import Experiment
from chaos.matrix import Cell, cell_experiment
from chaos.matrix_figures import not_applicable, repeat_figures, summarize
from chaos.runner import run_suite
from lab.brokerview import RedisBrokerView
from lab.errors import BrokerUnreadable
from lab.machine import environment, load_avg
from lab.probes import Probe
from lab.stack import Stack


class MatrixReporter:
    """Live progress for ``lab chaos matrix``: runs done / total with the current cell, elapsed and the time
    left (rich's estimate from the runs so far), the current run's tasks, and one line per finished run.
    The runner's per-fault lines go to ``log_path`` instead of the screen: 100+ runs would bury the table."""

    def __init__(self, console: Console, total_runs: int, log_path: Path) -> None:
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        ]
        self._progress = Progress(*columns, console=console, transient=False)
        self._cells = self._progress.add_task("matrix", total=total_runs)
        self._tasks = self._progress.add_task("tasks", total=None)
        self._log = log_path.open("a")

    def __enter__(self) -> MatrixReporter:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)  # type: ignore[arg-type]
        self._log.close()

    def log(self, message: str) -> None:
        self._log.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}\n")
        self._log.flush()
        if message.startswith("[bold]"):  # the runner announces each experiment so: that is the current cell
            self._progress.update(self._cells, description=message.split("[/]", 1)[0].removeprefix("[bold]"))

    def progress(self, done: int, total: int, phase: str) -> None:
        self._progress.update(self._tasks, completed=done, total=total, description=f"  {phase}")

    def finished(self, name: str, figures: dict[str, Any]) -> None:
        self._progress.advance(self._cells)
        if not figures.get("valid"):
            line = f"[red]{name}: invalid[/] ({figures.get('why')})"
        else:
            harms = ", ".join(f"{k} {figures[k]}" for k in ("lost", "twice", "parked", "queued") if figures.get(k))
            line = f"{name}: {harms or 'safe'} (re-run {figures['reruns']}, hit {figures['hit']})"
        self._progress.console.print(f"  {line}", highlight=False)


def app_record(cells: Sequence[Cell]) -> dict[str, Any] | None:
    """Which user's app the cells ran on and what each config laid over it (None: the reference app)."""
    apps = {c.config.id: c.config.app for c in cells if c.config.app is not None}
    if not apps:
        return None
    first = next(iter(apps.values()))
    return {**first.describe(), "profile": None, "overlay": None, "configs": {k: a.overlay for k, a in apps.items()}}


def run_matrix(
    cells: Sequence[Cell],
    repeat: int,
    run_dir: Path,
    console: Console,
    command: Sequence[str] | None = None,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Measure ``cells`` (n/a ones are recorded with their reason, not run) with the sleep probe or ``probe``;
    returns ``{"runs": [record], "cells": {id: summary}, "journals": {run name: journal}}``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    measured = [c for c in cells if c.not_applicable is None]
    experiments: list[Experiment] = []
    cell_of: dict[str, Cell] = {}
    for cell in measured:
        for r in range(1, repeat + 1):
            experiments.append(cell_experiment(cell, r, probe))
            cell_of[experiments[-1].name] = cell
    started = datetime.now(UTC)
    t0 = time.monotonic()
    env = environment()  # and each broker server's version, read from the server by the first cell on it
    record: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(command or ["lab", *sys.argv[1:]]),
        "repeat": repeat,
        "versions": env["versions"],
        "machine": {**env["machine"], "load_avg": load_avg()},
        "app": app_record(cells),
        "probe": probe or "sleep",
    }
    figures: dict[str, dict[str, Any]] = {}
    journals: dict[str, dict[str, Any]] = {}
    with MatrixReporter(console, len(experiments), run_dir / "matrix.log") as reporter:

        def after(stack: Stack | None, exp: Experiment, journal: dict[str, Any]) -> None:
            journals[exp.name] = journal
            figures[exp.name] = repeat_figures(journal)
            reporter.finished(exp.name, figures[exp.name])
            if stack is None:
                return
            try:
                view = stack.broker_view()
                record["versions"].setdefault(stack.broker, view.version())
                if isinstance(view, RedisBrokerView):
                    view.clear()  # a later cell must not inherit this one's parked or queued messages
            except BrokerUnreadable as exc:
                reporter.log(f"could not reset the broker after {exp.name}: {exc}")

        run_suite(experiments, run_dir, reporter, after=after, app=lambda exp: cell_of[exp.name].app)
    walls = [f["wall_s"] for f in figures.values() if f.get("wall_s") is not None]
    record["budget"] = {
        "elapsed_s": round(time.monotonic() - t0, 1),
        "runs": len(experiments),
        "run_wall_s_median": round(statistics.median(walls), 2) if walls else None,
        "load_avg_end": load_avg(),
    }
    summaries: dict[str, dict[str, Any]] = {}
    for cell in cells:
        title = f"{cell.fault.title} / {cell.config.title}"
        if why := cell.not_applicable:
            summaries[cell.id] = not_applicable(cell.id, title, why)
        else:
            runs = [figures[f"{cell.id}/r{r}"] for r in range(1, repeat + 1)]
            summaries[cell.id] = summarize(cell.id, title, runs)
    return {"runs": [record], "cells": summaries, "journals": journals}
