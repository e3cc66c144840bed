"""Chaos journals and matrix cells as JUnit suites (``--junit``): one suite per experiment or cell, with its
journal's path as a property, and one testcase for its verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chaos.matrix_doc import cell_text
from lab.junit import Case, Suite


def _measured(journal: Mapping[str, Any]) -> str:
    ledger = journal.get("ledger") or {}
    keys = ("sent", "completed", "lost", "gone", "parked", "duplicated", "unexpected", "recovered")
    counts = ", ".join(f"{k} {ledger[k]}" for k in keys if k in ledger)
    hit = journal.get("hit") or {}
    return f"{counts}; hit {hit.get('count', 0)}, in flight at the fault {hit.get('in_flight_at_fault', 0)}"


def _failure(journal: Mapping[str, Any]) -> str:
    """What was measured against what was expected, in one line."""
    violated = [p for p in journal.get("hypothesis") or [] if not p["met"]]
    if journal.get("expected") == "no-loss" and violated:
        shown = "; ".join(f"{p['name']}: measured {p['value']}, expected {p['tolerance']}" for p in violated)
        return f"{journal['reason']} ({shown})"
    return f"{journal['reason']} (expected {journal.get('expected')}; measured {_measured(journal)})"


def experiment_suite(journal: Mapping[str, Any]) -> Suite:
    name = str(journal["experiment"])
    broker = journal.get("broker", "redis")
    case = Case(name, f"chaos.{broker}", journal.get("wall_s") or journal.get("duration_s"), output=_measured(journal))
    if journal.get("ledger") is None:
        case.error = str(journal.get("reason", "the experiment did not run"))
    elif journal["verdict"] != "pass":
        case.failure = _failure(journal)
    run_dir = journal.get("run_dir")
    properties = {"journal": str(Path(run_dir) / "journal.json") if run_dir else "-", "broker": broker}
    properties["expected"] = journal.get("expected", "-")
    return Suite(f"chaos {name}", [case], properties)


def matrix_suites(result: Mapping[str, Any], run_dir: Path, problems: Sequence[str]) -> list[Suite]:
    """A suite per cell: passing when its fault hit in-flight work and it agrees with --against; failing
    otherwise (the message names the contradiction); skipped when n/a."""
    suites = []
    for cell_id, cell in result["cells"].items():
        case = Case(cell_id, f"chaos.matrix.{cell_id.split('/', 1)[0]}", output=f"{cell['outcome']}: {cell_text(cell)}")
        walls = [r.get("wall_s") or 0 for r in cell["runs"]]
        case.seconds = sum(walls) if walls else None
        mine = [p for p in problems if p.startswith(f"{cell_id}:")]
        if cell["outcome"] == "n/a":
            case.skipped = str(cell.get("why", "n/a"))
        elif mine:
            case.failure = "; ".join(mine)
        properties = {"journals": str(run_dir / cell_id), "outcome": cell["outcome"]}
        suites.append(Suite(f"matrix {cell_id}", [case], properties))
    return suites
