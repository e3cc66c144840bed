"""Named load scenarios: parsed from ``loadtests/scenarios.toml``, validated, overridden from the CLI.

Pure Python (no locust import): the lab process validates a scenario before it starts anything, and the
locustfile reads the same resolved scenario, handed to it as JSON in ``LAB_LOAD_SCENARIO`` (Locust forwards
the matching ``--lab-scenario`` option from the master to its workers, remote ones included).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError

SCENARIOS_FILE = Path(__file__).resolve().parents[1] / "scenarios.toml"
USER_CLASSES = ("SignupUser", "ExportUser", "AiUser", "ChordUser", "CeleryProducer")
SHAPES = ("steady", "step", "spike", "soak")
# Threshold name -> (comparison, unit). "<=" limits are maxima, ">=" limits are minima.
THRESHOLDS: dict[str, tuple[str, str]] = {
    "max_failure_ratio": ("<=", ""),
    "p95_http_ms": ("<=", " ms"),
    "p95_task_ms": ("<=", " ms"),
    "min_rps": (">=", " req/s"),
    "max_task_failure_ratio": ("<=", ""),
    "max_unfinished_tasks": ("<=", " tasks"),  # always checked, limit 0 unless a scenario says otherwise
    # drain = "broker": tasks neither finished nor held by the broker after the drain (lost); always checked.
    "max_unaccounted_tasks": ("<=", " tasks"),
}
# What the drain waits for: "finish" (every dispatched task ends), or "broker" (a scenario that builds a
# backlog on purpose: every dispatched task has ended or is still held by the broker, queued or unacked).
DRAINS = ("finish", "broker")
MAX_DURATION_S = 7 * 24 * 3600


class ScenarioError(LabError, ValueError):
    """A scenario name, file or override is wrong. ``str()`` says what and how to fix it."""


@dataclass(frozen=True)
class Scenario:
    name: str
    users: int
    duration_s: float
    spawn_rate: float = 5.0
    shape: str = "steady"
    description: str = ""
    # Shape knobs: step -> steps; spike -> baseline (fraction of users), spike_at and spike_len (fractions of
    # the duration); soak -> ramp (fraction of the duration).
    shape_params: dict[str, float] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    profile: str = "reference"
    # Only for the Stack `lab load` starts itself: worker processes, Settings overrides, AI stub knobs.
    workers: int = 1
    overrides: dict[str, str] = field(default_factory=dict)
    ai_latency: str = "fixed:0.01"
    ai_error_rate: float = 0.0
    wait: str = "between:0.5,1.5"
    follow: bool = True  # poll each dispatched task until it is done (False: dispatch and move on)
    poll_interval_s: float = 0.2
    task_timeout_s: float = 30.0
    chord_size: int = 10
    producer_task: str = "app.tasks.workflows.process_item"
    # CeleryProducer's arguments: None sends the reference task's one number; a template (lab/probes.fill:
    # "{id}" is each message's task id, "{index}" its number) for another app's task.
    producer_args: list[Any] | None = None
    producer_kwargs: dict[str, Any] = field(default_factory=dict)
    # A user's app (MODULE:ATTR) whose task CeleryProducer sends; "" for the reference app (set by --app).
    app: str = ""
    stop_timeout_s: float = 10.0
    drain_s: float = 60.0
    drain: str = "finish"  # one of DRAINS
    thresholds: dict[str, float] = field(default_factory=dict)
    # Filled in at run time for CeleryProducer: the deployment's broker, result backend and cache URLs.
    broker: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}})

    @property
    def user_classes(self) -> list[str]:
        return [name for name in USER_CLASSES if self.weights.get(name, 0) > 0]

    @property
    def uses_broker(self) -> bool:
        return self.weights.get("CeleryProducer", 0) > 0

    @property
    def http_user_classes(self) -> list[str]:
        return [name for name in self.user_classes if name != "CeleryProducer"]

    def for_app(self, app: str, task: str, args: list[Any], kwargs: dict[str, Any]) -> Scenario:
        """This scenario sending a user's ``task`` with an argument template; only broker-only scenarios
        can: the HTTP flows drive the reference API."""
        if not self.uses_broker or self.http_user_classes:
            raise ScenarioError(
                f"scenario {self.name} drives the reference app's HTTP API "
                f"({', '.join(self.http_user_classes) or 'no CeleryProducer'}); with --app run broker-direct"
            )
        return dataclasses.replace(self, app=app, producer_task=task, producer_args=args, producer_kwargs=kwargs)

    def with_overrides(
        self,
        *,
        users: int | None = None,
        duration_s: float | None = None,
        profile: str | None = None,
        thresholds: dict[str, float] | None = None,
    ) -> Scenario:
        changes: dict[str, Any] = {}
        if users is not None:
            if users < 1:
                raise ScenarioError(f"--users must be at least 1, got {users}")
            changes["users"] = users
        if duration_s is not None:
            changes["duration_s"] = duration_s
        if profile is not None:
            changes["profile"] = profile
        if thresholds:
            changes["thresholds"] = {**self.thresholds, **thresholds}
        return dataclasses.replace(self, **changes)


_SPAN = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h30m``...; ScenarioError for anything else or <= 0."""
    hint = "use seconds (90) or a span like 30s, 5m, 1h30m"
    if isinstance(text, bool):
        raise ScenarioError(f"bad duration {text!r}: {hint}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _SPAN.match(text.strip().lower())
        if not text.strip() or match is None:
            raise ScenarioError(f"bad duration {text!r}: {hint}")
        parts = match.groupdict()
        seconds = sum(float(parts[k] or 0) * mult for k, mult in (("h", 3600), ("m", 60), ("s", 1)))
    if not math.isfinite(seconds) or seconds <= 0:
        raise ScenarioError(f"bad duration {text!r}: it must be more than 0 seconds; {hint}")
    if seconds > MAX_DURATION_S:
        raise ScenarioError(f"bad duration {text!r}: at most 7 days")
    return seconds


def parse_wait(spec: str) -> tuple[str, tuple[float, ...]]:
    """``none``, ``constant:S``, ``between:LO,HI`` or ``constant_throughput:PER_S`` (per user)."""
    kind, _, rest = spec.partition(":")
    want = {"none": 0, "constant": 1, "between": 2, "constant_throughput": 1}
    try:
        nums = tuple(float(x) for x in rest.split(",")) if rest else ()
    except ValueError:
        nums = ()
    if (
        kind not in want
        or len(nums) != want[kind]
        or any(n < 0 or not math.isfinite(n) for n in nums)
        or (kind == "between" and nums[0] > nums[1])
        or (kind == "constant_throughput" and nums[0] <= 0)
    ):
        raise ScenarioError(f"bad wait {spec!r}: expected none, constant:S, between:LO,HI or constant_throughput:PER_S")
    return kind, nums


def parse_threshold(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` from ``--threshold``."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in THRESHOLDS:
        raise ScenarioError(f"bad --threshold {text!r}: expected NAME=VALUE with NAME one of {', '.join(THRESHOLDS)}")
    try:
        limit = float(value)
    except ValueError:
        raise ScenarioError(f"bad --threshold {text!r}: {value!r} is not a number") from None
    if not math.isfinite(limit) or limit < 0:
        raise ScenarioError(f"bad --threshold {text!r}: the limit must be a number >= 0")
    return name, limit


_FIELDS = {f.name: f for f in dataclasses.fields(Scenario)}
_FILE_ONLY = {"duration"}  # the TOML spells duration as a span; the dataclass holds seconds


def _unknown(where: str, key: str, known: list[str]) -> ScenarioError:
    hint = difflib.get_close_matches(key, known, n=1)
    return ScenarioError(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]}?)" if hint else ""))


def _build(name: str, raw: dict[str, Any], where: str) -> Scenario:
    known = sorted((set(_FIELDS) | _FILE_ONLY) - {"name", "duration_s", "broker", "app"})
    values: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        if key not in known:
            raise _unknown(where, key, known)
        if key == "duration":
            values["duration_s"] = parse_duration(value)
        else:
            values[key] = value
    for required in ("users", "duration_s"):
        if required not in values:
            raise ScenarioError(f"{where}: missing {required.removesuffix('_s')!r}")
    try:
        scenario = Scenario(**values)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    validate(scenario, where)
    return scenario


def validate(s: Scenario, where: str) -> None:
    def bad(msg: str) -> ScenarioError:
        return ScenarioError(f"{where}: {msg}")

    if not isinstance(s.users, int) or isinstance(s.users, bool) or s.users < 1:
        raise bad(f"users must be a whole number >= 1, got {s.users!r}")
    if s.shape not in SHAPES:
        raise bad(f"shape {s.shape!r} is not one of {', '.join(SHAPES)}")
    if not s.weights or not any(w > 0 for w in s.weights.values()):
        raise bad(f"weights must give at least one of {', '.join(USER_CLASSES)} a weight > 0")
    for cls, w in s.weights.items():
        if cls not in USER_CLASSES:
            raise _unknown(f"{where} weights", cls, list(USER_CLASSES))
        if not isinstance(w, int) or w < 0:
            raise bad(f"weight of {cls} must be a whole number >= 0, got {w!r}")
    for key, limit in s.thresholds.items():
        if key not in THRESHOLDS:
            raise _unknown(f"{where} thresholds", key, list(THRESHOLDS))
        if not isinstance(limit, (int, float)) or limit < 0:
            raise bad(f"threshold {key} must be a number >= 0, got {limit!r}")
    positive = {
        "spawn_rate": s.spawn_rate,
        "poll_interval_s": s.poll_interval_s,
        "task_timeout_s": s.task_timeout_s,
        "drain_s": s.drain_s,
    }
    for key, value in positive.items():
        if not isinstance(value, (int, float)) or value <= 0:
            raise bad(f"{key} must be a number > 0, got {value!r}")
    if s.drain not in DRAINS:
        raise bad(f"drain {s.drain!r} is not one of {', '.join(DRAINS)}")
    if not 1 <= s.chord_size <= 1000:
        raise bad(f"chord_size must be within 1..1000, got {s.chord_size}")
    if not 1 <= s.workers <= 16:
        raise bad(f"workers must be within 1..16, got {s.workers}")
    if not 0 <= s.ai_error_rate <= 1:
        raise bad(f"ai_error_rate must be within 0..1, got {s.ai_error_rate}")
    if s.stop_timeout_s < 0:
        raise bad("stop_timeout_s must be >= 0")
    parse_wait(s.wait)


def load_scenarios(path: Path = SCENARIOS_FILE) -> dict[str, Scenario]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"defaults", "scenarios"}
    if unknown:
        raise ScenarioError(
            f"{path}: unknown top-level table(s) {sorted(unknown)}; use [defaults] and [scenarios.NAME]"
        )
    defaults = data.get("defaults", {})
    out: dict[str, Scenario] = {}
    for name, raw in data.get("scenarios", {}).items():
        merged = {**defaults, **raw}
        for table in ("thresholds", "overrides", "shape_params"):
            merged[table] = {**defaults.get(table, {}), **raw.get(table, {})}
        # ``name = false`` in a scenario drops a threshold it would inherit from [defaults].
        merged["thresholds"] = {k: v for k, v in merged["thresholds"].items() if v is not False}
        merged["overrides"] = {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in merged["overrides"].items()
        }
        out[name] = _build(name, merged, f"{path.name} [scenarios.{name}]")
    return out


def get_scenario(name: str, path: Path = SCENARIOS_FILE) -> Scenario:
    scenarios = load_scenarios(path)
    if name not in scenarios:
        hint = difflib.get_close_matches(name, list(scenarios), n=1)
        raise ScenarioError(
            f"unknown scenario {name!r}"
            + (f" (did you mean {hint[0]}?)" if hint else "")
            + f": choose one of {', '.join(scenarios)} (defined in {path})"
        )
    return scenarios[name]


def broker_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """A deployment's broker, result backend and cache URLs from its Settings env vars; {} unless all are set."""
    got = {
        "broker_url": environ.get("CELERY_BROKER_URL", ""),
        "backend_url": environ.get("CELERY_RESULT_BACKEND", ""),
        "cache_url": environ.get("CACHE_URL", ""),
    }
    return got if all(got.values()) else {}


def from_option(value: str, environ: Mapping[str, str] | None = None) -> Scenario:
    """The locustfile's view: ``--lab-scenario`` holds a resolved scenario as JSON (what ``lab load`` passes),
    or a scenario name (Locust run by hand: the broker then comes from CELERY_BROKER_URL etc.)."""
    value = value.strip()
    if value.startswith("{"):
        return Scenario.from_json(value)
    sc = get_scenario(value or "smoke")
    return dataclasses.replace(sc, broker=broker_from_env(os.environ if environ is None else environ))
