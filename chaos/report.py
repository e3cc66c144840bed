"""How chaos runs show themselves: live progress while an experiment runs, and its verdict as a table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class Reporter(Protocol):
    def log(self, message: str) -> None: ...
    def progress(self, done: int, total: int, phase: str) -> None: ...


class QuietReporter:
    def log(self, message: str) -> None:
        pass

    def progress(self, done: int, total: int, phase: str) -> None:
        pass


class ConsoleReporter:
    """Live progress for the CLI: one bar of tasks completed (ledger), fault lines printed above it."""

    def __init__(self, console: Console) -> None:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=console, transient=False)
        self._bar = self._progress.add_task("starting", total=None)

    @contextlib.contextmanager
    def live(self) -> Iterator[ConsoleReporter]:
        with self._progress:
            yield self

    def log(self, message: str) -> None:
        self._progress.console.print(f"  {message}", highlight=False)

    def progress(self, done: int, total: int, phase: str) -> None:
        self._progress.update(self._bar, completed=done, total=total, description=phase)


def verdict_table(journal: dict[str, Any]) -> Table:
    ok = journal["verdict"] == "pass"
    colour = "green" if ok else "red"
    table = Table(title=f"{journal['experiment']}: [{colour}]{journal['verdict'].upper()}[/] ({journal['reason']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in journal["ledger"].items():
        table.add_row(f"ledger.{key}", str(value))
    table.add_row("redelivery p50 / max (s)", f"{journal['redelivery_s']['p50']} / {journal['redelivery_s']['max']}")
    table.add_row("leftovers queued/unacked/gone", "/".join(str(v) for v in journal["leftovers"].values()))
    table.add_row("faults", ", ".join(f"{f['kind']}@{f['at']}s" for f in journal["faults"]) or "-")
    table.add_row("backend SUCCESS", str(journal["backend"]["success"]))
    if sink := journal.get("sink"):
        table.add_row("SMTP sink: delivered / duplicate emails", f"{sink['delivered']} / {sink['duplicate_emails']}")
    if witness := journal.get("witness"):
        seen = witness.get("error") or (
            f"{witness['counted']} / {witness['missing']} / {witness['duplicate_effects']}"
            + ("" if witness["agrees"] else " [red](ledger disagrees)[/]")
        )
        table.add_row(f"witness {witness['witness']}: counted / missing / twice", seen)
    table.add_row("drain", f"{journal['drain']} after {journal['drain_s']}s")
    table.add_row("expected", journal["expected"])
    for probe in journal["hypothesis"]:
        mark = "ok" if probe["met"] else "[red]violated[/]"
        table.add_row(f"probe {probe['name']}", f"{probe['value']} vs {probe['tolerance']}: {mark}")
    return table
