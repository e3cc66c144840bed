"""What a bench is asked to compare: its sides (a profile plus overrides and knobs) and its settings, validated
before the first (slow) run so that bad input costs nothing."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.config import Settings
from bench.stats import ALPHA
from bench.stock_app import TASKS as STOCK_TASKS
from bench.workloads import Workload
from lab.apps import AppTarget, celery_setting_names, load_overlay
from lab.errors import ProfileError, SettingsInvalid
from lab.probes import BENCH_KNOBS
from lab.procs import require_binary
from lab.profiles import load_profile, resolve

MIN_REPEAT = 3
KNOBS = BENCH_KNOBS


@dataclass(frozen=True)
class Side:
    label: str
    spec: str
    profile: str
    overrides: dict[str, str] = field(default_factory=dict)  # Settings env vars beating the profile
    knobs: dict[str, str] = field(default_factory=dict)  # BENCH_* env vars for the bench tasks
    app: AppTarget = field(default_factory=AppTarget)  # a user's app carries this side's profile as its overlay
    probes: bool = True  # the lab's harness tasks in the worker (the stock side has none: bench/stock_app.py)
    task_names: dict[str, str] = field(default_factory=dict)  # workload -> the side's own task (stock side)

    @property
    def bare(self) -> bool:
        return self.knobs.get("BENCH_BARE") == "1"

    @property
    def via_backend(self) -> bool:
        """Finished tasks are found through the result backend (no reference timeline): bare sides, and every
        side of a user's app."""
        return self.bare or not self.app.reference

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "spec": self.spec, "profile": self.profile, "overrides": self.overrides,
                "knobs": self.knobs, **({} if self.app.reference else {"app": self.app.describe()})}  # fmt: skip


USER_APP_SIDE = "app"  # with --app: the app's own settings, no profile laid over them
STOCK_SIDE = "stock"  # plain Celery with the reference's reliability settings (bench/stock_app.py)
STOCK_APP = "bench.stock_app:app"


def _knobs(spec: str, items: list[str], accept: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(BENCH_* knobs, other NAME=VALUE items whose NAME is in ``accept``) from a side's ``:NAME=VALUE,...``."""
    knobs: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip().upper()
        if not eq:
            raise ProfileError(f"bad side {spec!r}: {item!r} is not NAME=VALUE")
        if name in KNOBS:
            knobs[name] = value.strip()
        elif name in accept:
            overrides[name] = value.strip()
        else:
            what = "a setting (see app/core/config.py) nor " if accept else ""
            raise ProfileError(f"bad side {spec!r}: {name} is neither {what}one of {', '.join(KNOBS)}")
    for name in ("BENCH_SLEEP_MS", "BENCH_CPU_ITERS"):
        if name in knobs:
            try:
                if float(knobs[name]) < 0:
                    raise ValueError
            except ValueError:
                raise ProfileError(f"bad side {spec!r}: {name} must be a number >= 0") from None
    return knobs, overrides


def _user_side(spec: str, label: str | None, app: AppTarget) -> Side:
    """With --app a side is ``app`` (its own settings) or a .toml of Celery settings, then ``:BENCH_*=...``."""
    profile, _, rest = spec.partition(":")
    knobs, _ = _knobs(spec, list(filter(None, rest.split(","))), set())
    overlay = {} if profile == USER_APP_SIDE else load_overlay(Path(profile))
    side_app = AppTarget(app.spec, app.path, overlay, None if profile == USER_APP_SIDE else profile)
    if side_app.settings(side_app.client("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1").conf)["ignore_result"]:
        raise ProfileError(
            f"side {spec!r}: the bench finds a user's finished tasks through the result backend, and "
            f"{app.spec} ignores results: lay task_ignore_result = false over it in the side's profile"
        )
    return Side(label or spec, spec, profile, {}, knobs, side_app)


def _setting_value(raw: str) -> Any:
    """A Celery setting's value as written on a side: JSON (``true``, ``4``, ``"x"``), else the plain string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _stock_side(spec: str, label: str | None) -> Side:
    """``stock`` or ``stock:NAME=VALUE,...``: BENCH_* knobs, or Celery settings (lower case, e.g.
    ``worker_send_task_events=true``) laid over the stock app: one factor of the reference at a time."""
    _, _, rest = spec.partition(":")
    knobs: dict[str, str] = {}
    overlay: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq:
            raise ProfileError(f"bad side {spec!r}: {item!r} is not NAME=VALUE")
        if name.upper() in ("BENCH_SLEEP_MS", "BENCH_CPU_ITERS"):
            knobs.update(_knobs(spec, [item], set())[0])
        elif name in celery_setting_names():
            overlay[name] = _setting_value(value.strip())
        else:
            hint = difflib.get_close_matches(name, sorted(celery_setting_names()), n=1)
            raise ProfileError(
                f"bad side {spec!r}: {name} is neither BENCH_SLEEP_MS, BENCH_CPU_ITERS nor a Celery setting"
                + (f" (did you mean {hint[0]}?)" if hint else "")
            )
    target = AppTarget(STOCK_APP, None, overlay, "stock side" if overlay else None)
    return Side(label or spec, spec, STOCK_SIDE, {}, knobs, target, probes=False, task_names=dict(STOCK_TASKS))


def parse_side(spec: str, label: str | None = None, app: AppTarget | None = None) -> Side:
    """``PROFILE`` or ``PROFILE:NAME=VALUE,NAME=VALUE`` (Settings env vars, or BENCH_* knobs); ``stock``
    (plain Celery, bench/stock_app.py). With a user's ``app``: ``app`` or a .toml of Celery settings, then
    BENCH_* knobs."""
    profile, _, rest = spec.partition(":")
    if not profile:
        raise ProfileError(f"bad side {spec!r}: expected PROFILE or PROFILE:NAME=VALUE,... (e.g. reference)")
    if profile == STOCK_SIDE:
        return _stock_side(spec, label)
    if app is not None and not app.reference:
        return _user_side(spec, label, app)
    load_profile(profile)
    knobs, overrides = _knobs(spec, list(filter(None, rest.split(","))), set(Settings.env_names()))
    settings = resolve(profile, {}, overrides)  # raises SettingsInvalid with one line
    if knobs.get("BENCH_BARE") == "1" and settings.celery_task_ignore_result:
        raise ProfileError(
            f"bad side {spec!r}: BENCH_BARE=1 finds finished tasks through the result backend; "
            "it needs CELERY_TASK_IGNORE_RESULT=false"
        )
    return Side(label or spec, spec, profile, overrides, knobs)


@dataclass
class BenchConfig:
    sides: list[Side]
    workload: Workload
    repeat: int = 5
    tasks: int | None = None
    rate: float | None = None  # latency phase rate; default: 40 % of the first run's throughput
    latency_s: float = 3.0
    reruns: int = 1
    disturbance_limit: float = 10.0
    alpha: float = ALPHA
    workers: int = 1

    def validate(self) -> None:
        if len(self.sides) < 2:
            raise ProfileError("a benchmark needs at least two sides (A and B)")
        if self.repeat < MIN_REPEAT:
            raise ProfileError(
                f"--repeat {self.repeat} is too few: with fewer than {MIN_REPEAT} repetitions per side no "
                f"confidence interval or test means anything; use --repeat {MIN_REPEAT} or more (default 5)"
            )
        if self.tasks is not None and self.tasks < 50:
            raise ProfileError(f"--tasks {self.tasks} is too few for a throughput figure; use 50 or more")
        if self.rate is not None and self.rate <= 0:
            raise ProfileError("--rate must be positive (tasks per second)")
        for side in self.sides:
            if side.app.reference:
                continue
            if self.workload.reference_only:
                raise ProfileError(
                    f"workload {self.workload.name} sends the reference app's tasks; on {side.app.spec} use noop, "
                    "io, cpu or --task NAME"
                )
            if self.workload.task is not None:
                side.app.require_task(self.workload.task[0])

    @property
    def backlog(self) -> int:
        return self.tasks or self.workload.default_tasks


def ensure_inputs(cfg: BenchConfig) -> None:
    """Validate everything before the first (slow) run, so bad input costs nothing."""
    cfg.validate()
    require_binary("redis-server", "redis-server")
    require_binary("redis-benchmark", "redis-tools")
    for side in cfg.sides:
        if not side.app.reference:
            continue  # its profile was read and its app imported when the side was parsed
        try:
            resolve(side.profile, {}, side.overrides)
        except SettingsInvalid as exc:
            raise ProfileError(f"side {side.spec!r}: {exc}") from None
