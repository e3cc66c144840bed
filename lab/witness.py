"""A user's own count of a probe's side effects: the second, independent witness of a chaos run on their app.

The ledger counts what the lab's signal hooks saw run. A team whose task leaves something they can count (a
row, a file, a message in a sink) names a function that counts it, and the journal sets the two side by side:

    "probe": {"task": "shop.record_order", "args": ["{id}"], "witness": ".lab_witness:orders_seen"}

A module name that starts with a dot is relative to the app's package (``.lab_witness`` next to
``shop/celery.py`` is ``shop.lab_witness``), so an experiment file still works when the project is renamed.

The function is called once, in the lab's process after the run has drained, with the list of task ids the
run sent (the ``{id}`` placeholder put each one in the message's arguments), and returns either a mapping of
task id to how many times its side effect is there, or an iterable with one id per side effect (e.g. the
rows of ``SELECT order_id FROM orders``). Ids it does not know are ignored; ids it does not return count 0.
It reads what it counts with its own configuration (the env the workers had), never through the lab.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lab.apps import AppInputError, AppTarget, import_object

Witness = Callable[[list[str]], Mapping[str, int] | Iterable[str]]
EXAMPLE = ".lab_witness:orders_seen"


def resolve(spec: str, app: AppTarget) -> str:
    """``spec`` with a relative module name (``.lab_witness:f``) made absolute against ``app``'s package."""
    if not spec.startswith("."):
        return spec
    module = importlib.import_module(app.spec.partition(":")[0])  # imported already: the app was loaded
    return importlib.util.resolve_name(spec.partition(":")[0], module.__package__ or "") + ":" + spec.partition(":")[2]


def load_witness(spec: str, app: AppTarget) -> Witness:
    """The function ``MODULE:ATTR`` names. AppInputError (one line, exit 2) when it does not import or is not
    callable, so a bad witness fails before anything starts."""
    try:
        if spec.startswith(".") and app.reference:
            raise AppInputError(f"{spec!r}: a relative witness needs --app (it is relative to the app's package)")
        if spec.startswith("."):
            app.load()  # the app's module (and --app-path on sys.path) before resolving against its package
        obj = import_object(resolve(spec, app), app.path, example=EXAMPLE)
    except AppInputError as exc:
        raise AppInputError(f"probe witness: {exc}") from None
    if not callable(obj):
        raise AppInputError(f"probe witness {spec} is a {type(obj).__name__}, not a function of the sent task ids")
    return obj  # type: ignore[return-value]  # callable() cannot check the signature; count() checks the result


def count(witness: Witness, spec: str, ids: list[str], completed: int) -> dict[str, Any]:
    """The witness's figures for ``ids`` beside the ledger's ``completed``. A witness that raises or returns
    something else is reported as an error with no figures, so a steady-state probe on it fails (never passes
    on a count that was not taken)."""
    try:
        raw = witness(list(ids))
        seen = Counter({str(k): int(v) for k, v in raw.items()}) if isinstance(raw, Mapping) else Counter(map(str, raw))
    except Exception as exc:  # the user's code: any failure is a finding of the run, not a crash of the lab
        return {"witness": spec, "error": f"{type(exc).__name__}: {exc}"}
    sent = set(ids)
    per_id = {i: n for i, n in seen.items() if i in sent and n > 0}
    effects = sum(per_id.values())
    return {
        "witness": spec,
        "counted": len(per_id),
        "effects": effects,
        "duplicate_effects": effects - len(per_id),
        "missing": len(sent) - len(per_id),
        "agrees": len(per_id) == completed,
    }


def probe_witness(probe: Any) -> str | None:
    """The witness a probe names (``"witness"`` in a task probe), or None."""
    spec = probe.get("witness") if isinstance(probe, Mapping) else None
    return str(spec) if spec else None


def measure(spec: str, app: AppTarget, ids: list[str], completed: int) -> dict[str, Any]:
    """Load the witness and count (``count``). One that stopped importing since the run was checked
    (``load_witness`` before the start) is reported as the witness's error, never a crash of the run."""
    try:
        witness = load_witness(spec, app)
    except AppInputError as exc:
        return {"witness": spec, "error": str(exc)}
    return count(witness, spec, ids, completed)
