"""A matrix cell's figures from its repeats' journals, and how two measurements of a cell compare. Pure.

Per repeat: lost (gone for good), parked (held unacked until the visibility timeout, with when it comes
back), still queued, re-run, completed twice, unexpected, redelivery p50/max, and what the fault hit. A cell
is the list of its repeats plus a verdict on them: ``invalid`` when a repeat's fault hit no in-flight work or
the repeat errored, ``unstable`` when the repeats disagree on what happened, else the outcome they share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# What a repeat's outcome is made of: the kinds of harm, not their exact counts (which vary with timing).
HARMS = ("lost", "twice", "parked", "queued")


def repeat_figures(journal: Mapping[str, Any]) -> dict[str, Any]:
    """One repeat's figures from its journal (chaos.runner.run_on_stack's)."""
    ledger = journal.get("ledger")
    if not ledger:
        return {"valid": False, "why": str(journal.get("reason", "no ledger"))}
    hit = journal.get("hit") or {}
    parked = journal.get("parked") or {}
    struck = bool(journal.get("faults"))
    landed = bool(hit.get("count") or hit.get("in_flight_at_fault"))
    redelivery = journal.get("redelivery_s") or {}
    figures: dict[str, Any] = {
        "valid": landed or not struck,
        "sent": ledger["sent"],
        "lost": ledger["gone"],
        "parked": ledger["parked"],
        "back_in_s": parked.get("back_in_s"),
        "restore_lock_s": parked.get("restore_lock_s"),
        "queued": ledger["queued"],
        "reruns": ledger["reruns"],
        "twice": ledger["duplicated"],
        "unexpected": ledger["unexpected"],
        "recovery_p50_s": redelivery.get("p50"),
        "recovery_max_s": redelivery.get("max"),
        "hit": int(hit.get("count") or 0),
        "in_flight_at_fault": int(hit.get("in_flight_at_fault") or 0),
        "caused_gone": int(hit.get("caused_gone") or 0),
        "backend_agrees": (journal.get("backend") or {}).get("agrees"),
        "wall_s": journal.get("wall_s"),
    }
    if not figures["valid"]:
        figures["why"] = "the fault hit no in-flight work: this repeat tested nothing"
    return figures


def signature(figures: Mapping[str, Any]) -> tuple[str, ...]:
    """What happened in a repeat, as the harms it showed (empty: nothing lost, twice, parked or queued)."""
    return tuple(h for h in HARMS if figures.get(h))


def outcome(runs: Sequence[Mapping[str, Any]]) -> str:
    """``invalid``, ``unstable``, ``safe`` or the shared harms joined with '+' (e.g. ``lost+parked``)."""
    if not runs or not all(r.get("valid") for r in runs):
        return "invalid"
    signatures = {signature(r) for r in runs}
    if len(signatures) > 1:
        return "unstable"
    return "+".join(signatures.pop()) or "safe"


def summarize(cell_id: str, title: str, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"id": cell_id, "title": title, "outcome": outcome(runs), "runs": [dict(r) for r in runs]}


def not_applicable(cell_id: str, title: str, why: str) -> dict[str, Any]:
    return {"id": cell_id, "title": title, "outcome": "n/a", "why": why, "runs": []}


def disagreements(measured: Mapping[str, Mapping[str, Any]], committed: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Cells measured here whose outcome contradicts the committed one. An unstable cell on either side agrees
    with anything (it is already marked as such); so does a cell the committed doc does not have."""
    out = []
    for cell_id, cell in measured.items():
        before = committed.get(cell_id)
        if before is None or "unstable" in (cell["outcome"], before["outcome"]):
            continue
        if cell["outcome"] != before["outcome"]:
            out.append(f"{cell_id}: {cell['outcome']} here, {before['outcome']} in the committed doc")
    return out


def span(values: Sequence[Any], unit: str = "") -> str:
    """A range of repeats' values as text, never an average: ``3``, ``2-4``; ``-`` when none is known."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    lo, hi = min(known), max(known)
    fmt = (lambda v: f"{v:g}") if any(isinstance(v, float) for v in known) else str
    return f"{fmt(lo)}{unit}" if lo == hi else f"{fmt(lo)}-{fmt(hi)}{unit}"
