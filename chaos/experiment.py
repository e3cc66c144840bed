"""Experiment files (Chaos Toolkit's shape) under chaos/experiments/: load, validate, list.

An experiment has a title, description, tags, configuration (profile, broker and the brokers it also means
something on, workers, Settings overrides, tasks, the probe task, task duration, redelivery horizon), ``expected``
("no-loss" or "loss"), a steady-state hypothesis (probes over journal metrics with tolerances), a method
(the load, then faults with triggers) and rollbacks.
Anything wrong in a file is one ``ExperimentError`` line naming the file and the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from chaos.faults import FAULT_OPTIONS, FAULTS, ROLLBACKS, VICTIMS
from lab.apps import AppTarget
from lab.brokerview import BROKERS
from lab.errors import LabError
from lab.probes import PROBES, Probe, needs_smtp, probe_task
from lab.witness import load_witness, probe_witness

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"
# Tag of an experiment whose hypothesis holds only under the reference overrides it sets (e.g. a visibility
# timeout shorter than its task): it means nothing on a user's app, whose own settings apply instead.
REFERENCE_ONLY_TAG = "reference-only"

# Journal values a steady-state probe may test (dotted paths into the journal).
METRICS = (
    "ledger.sent",
    "ledger.completed",
    "ledger.lost",
    "ledger.duplicated",
    "ledger.unexpected",
    "ledger.recovered",
    "ledger.reruns",
    "redelivery_s.p50",
    "redelivery_s.max",
    "leftovers.queued",
    "leftovers.unacked",
    "leftovers.gone",
    "drain_s",
    "witness.counted",
    "witness.missing",
    "witness.duplicate_effects",
)

_TOLERANCE = {
    "oneOf": [
        {"type": "number"},
        {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "items": {"type": ["number", "null"]},
        },
    ]
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "description", "configuration", "expected", "steady-state-hypothesis", "method"],
    "properties": {
        "version": {"type": "string"},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "expected": {"enum": ["no-loss", "loss"]},
        "configuration": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "profile": {"type": "string"},
                "broker": {"enum": list(BROKERS)},
                "brokers": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(BROKERS)}},
                "redis_aof": {"type": "boolean"},
                "net_proxy": {"type": "boolean"},
                "separate_backend": {"type": "boolean"},
                "workers": {"type": "integer", "minimum": 1, "maximum": 8},
                "overrides": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                "tasks": {"type": "integer", "minimum": 1, "maximum": 100000},
                # A built-in probe, or one of the app's tasks with an argument template (lab/probes.py).
                "probe": {
                    "oneOf": [
                        {"enum": list(PROBES)},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["task"],
                            "properties": {
                                "task": {"type": "string", "minLength": 1},
                                "args": {"type": "array"},
                                "kwargs": {"type": "object"},
                                # MODULE:ATTR of the user's count of the task's side effects (lab/witness.py).
                                "witness": {"type": "string", "pattern": "^[^:]+:[^:]+$"},
                            },
                        },
                    ]
                },
                # Seconds each probe sleeps: a number, or {"uniform": [low, high]} drawn per task.
                "task_duration_s": {
                    "oneOf": [
                        {"type": "number", "minimum": 0, "maximum": 600},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["uniform"],
                            "properties": {
                                "uniform": {
                                    "type": "array",
                                    "minItems": 2,
                                    "maxItems": 2,
                                    "items": {"type": "number", "minimum": 0, "maximum": 600},
                                }
                            },
                        },
                    ]
                },
                "horizon_s": {"type": "number", "exclusiveMinimum": 0},
                "deadline_s": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "steady-state-hypothesis": {
            "type": "object",
            "required": ["title", "probes"],
            "properties": {
                "title": {"type": "string"},
                "probes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "name", "provider", "tolerance"],
                        "properties": {
                            "type": {"const": "probe"},
                            "name": {"type": "string"},
                            "provider": {
                                "type": "object",
                                "required": ["type", "metric"],
                                "properties": {"type": {"const": "journal"}, "metric": {"enum": list(METRICS)}},
                            },
                            "tolerance": _TOLERANCE,
                        },
                    },
                },
            },
        },
        "method": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "name", "provider"],
                "properties": {
                    "type": {"const": "action"},
                    "name": {"type": "string"},
                    "provider": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"enum": ["load", "fault"]},
                            "kind": {"enum": sorted(FAULTS)},
                            "target": {"type": "string"},
                            "signal": {"enum": ["SIGKILL", "SIGTERM", "SIGQUIT"]},
                            "replace": {"type": "boolean"},
                            "victim": {"enum": list(VICTIMS)},  # kill_pool_child: which busy child
                            "settle_s": {"type": "number", "minimum": 0, "maximum": 5},  # kill_pool_child
                            "duration_s": {"type": "number", "minimum": 0, "maximum": 120},
                        },
                    },
                    "trigger": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "after_completions": {"type": "integer", "minimum": 0},
                            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                        },
                    },
                },
            },
        },
        "rollbacks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "name", "provider"],
                "properties": {
                    "type": {"const": "action"},
                    "name": {"type": "string"},
                    "provider": {
                        "type": "object",
                        "required": ["type", "kind"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "rollback"},
                            "kind": {"enum": sorted(ROLLBACKS)},
                            # ensure_workers: how many live workers to restore (default: the experiment's).
                            "count": {"type": "integer", "minimum": 1, "maximum": 16},
                        },
                    },
                },
            },
        },
    },
}

DEFAULTS: dict[str, Any] = {
    "profile": "reference",
    "broker": "redis",
    "redis_aof": False,
    "net_proxy": False,
    "separate_backend": False,
    "workers": 2,
    "overrides": {},
    "tasks": 200,
    "probe": "sleep",
    "task_duration_s": 0.05,
    "horizon_s": 15.0,
    "deadline_s": 120.0,
}


def task_durations(spec: float | dict[str, list[float]], n: int, seed: str) -> list[float]:
    """Each of ``n`` probes' sleep: the number itself, or drawn from ``{"uniform": [low, high]}`` with a seed
    (the ledger run), so a journal's durations can be drawn again."""
    if not isinstance(spec, dict):
        return [float(spec)] * n
    low, high = spec["uniform"]
    rng = random.Random(seed)
    return [round(rng.uniform(low, high), 4) for _ in range(n)]


class ExperimentError(LabError, ValueError):
    """An experiment file (or name) is not usable. ``str()`` says which and how to fix it."""


@dataclass
class Experiment:
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def title(self) -> str:
        return str(self.data["title"])

    @property
    def expected(self) -> str:
        return str(self.data["expected"])

    @property
    def tags(self) -> list[str]:
        return list(self.data.get("tags", []))

    @property
    def config(self) -> dict[str, Any]:
        return {**DEFAULTS, **self.data["configuration"]}

    @property
    def brokers(self) -> list[str]:
        """Brokers the experiment is meaningful on (``configuration.brokers``; default: its own broker only)."""
        cfg = self.config
        return list(cfg.get("brokers") or [cfg["broker"]])

    def on_broker(self, broker: str | None) -> Experiment:
        """This experiment run on ``broker`` instead of its own (``lab chaos run --broker``)."""
        if broker is None or broker == self.config["broker"]:
            return self
        if broker not in self.brokers:
            raise ExperimentError(
                f"experiment {self.name!r} is specific to {', '.join(self.brokers)} (configuration.brokers); "
                f"it cannot run on {broker}: see `lab chaos list` for the experiments that can"
            )
        data = {**self.data, "configuration": {**self.data["configuration"], "broker": broker}}
        return Experiment(self.name, self.path, data)

    def with_probe(self, probe: Probe | None) -> Experiment:
        """This experiment with another probe (``lab chaos run --probe``), validated as a file's would be."""
        if probe is None:
            return self
        data = {**self.data, "configuration": {**self.data["configuration"], "probe": probe}}
        return experiment_from_data(self.name, self.path, data)

    def not_for(self, app: AppTarget) -> str | None:
        """Why this experiment means nothing on ``app`` (None: it can run there). On a user's app the
        experiment's overrides (reference Settings) do not apply: the app's own settings and profile do."""
        if app.reference:
            return None
        probe = self.config["probe"]
        if needs_smtp(probe):
            return f"its probe is the reference app's {probe_task(probe)}"
        if self.expected == "loss":
            return (
                "a control: its loss comes from a reference-app setting it overrides, which a user's app does not read"
            )
        if REFERENCE_ONLY_TAG in self.tags:
            return "what it expects follows from the reference settings it overrides (see its description)"
        return None

    def check_app(self, app: AppTarget) -> Experiment:
        """Raise ExperimentError when this experiment cannot run on ``app``, or its probe task is not the app's."""
        if why := self.not_for(app):
            raise ExperimentError(f"experiment {self.name!r} cannot run on {app.spec}: {why}")
        probe = self.config["probe"]
        if not isinstance(probe, str):
            app.require_task(probe_task(probe))
            if witness := probe_witness(probe):
                load_witness(witness, app)
        return self

    @property
    def faults(self) -> list[dict[str, Any]]:
        return [a for a in self.data["method"] if a["provider"]["type"] == "fault"]


def list_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.json"))


def load_experiment(name_or_path: str) -> Experiment:
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = EXPERIMENTS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ExperimentError(
            f"experiment {name_or_path!r} not found: choose one of {', '.join(list_experiments())} "
            "(see `lab chaos list`) or give a path to a .json file"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExperimentError(f"{path}: not valid JSON: {exc}") from None
    return experiment_from_data(path.stem, path, data)


def experiment_from_data(name: str, path: Path, data: dict[str, Any]) -> Experiment:
    """An experiment from its parsed JSON (a file's, or one built in code like the matrix cells), validated:
    errors name ``path`` and the field."""
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ExperimentError(f"{path}: {where}: {exc.message}") from None
    for action in data["method"]:
        provider = action["provider"]
        options = set(provider) - {"type", "kind"}
        if provider["type"] == "load":
            if options or "kind" in provider:
                extra = sorted(options | ({"kind"} & set(provider)))
                raise ExperimentError(f"{path}: the load action {action['name']!r} takes no options ({extra})")
            continue
        if "kind" not in provider:
            raise ExperimentError(f"{path}: method action {action['name']!r} needs provider.kind ({sorted(FAULTS)})")
        if unused := sorted(options - FAULT_OPTIONS[provider["kind"]]):
            uses = ", ".join(sorted(FAULT_OPTIONS[provider["kind"]])) or "none"
            raise ExperimentError(
                f"{path}: method action {action['name']!r}: fault {provider['kind']} does not use {', '.join(unused)} "
                f"(its options: {uses})"
            )
    cfg = data["configuration"]
    if "brokers" in cfg and cfg.get("broker", DEFAULTS["broker"]) not in cfg["brokers"]:
        raise ExperimentError(f"{path}: configuration.broker must be one of configuration.brokers")
    duration = cfg.get("task_duration_s")
    if isinstance(duration, dict) and duration["uniform"][0] > duration["uniform"][1]:
        raise ExperimentError(f"{path}: configuration.task_duration_s.uniform must be [low, high] with low <= high")
    if sum(a["provider"]["type"] == "load" for a in data["method"]) != 1:
        raise ExperimentError(f"{path}: method needs exactly one action with provider.type 'load'")
    return Experiment(name, path, data)
