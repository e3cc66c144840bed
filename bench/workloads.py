"""Fixed-size workloads: which tasks a bench run sends, and what the Stack needs to run them."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lab.errors import ProfileError
from lab.probes import BENCH_TASKS, fill, parse_call

Call = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    default_tasks: int  # backlog size: several seconds of draining on a 2-core machine with the reference profile
    smtp: bool = False
    ai_stub: bool = False
    reference_only: bool = False  # sends the reference app's own tasks
    # A user's task (``--task NAME --args JSON``): its name and argument template (lab.probes.fill placeholders).
    task: tuple[str, tuple[Any, ...], dict[str, Any]] | None = None

    def calls(self, bare: bool = False, names: Mapping[str, str] | None = None) -> Iterator[Call]:
        """An endless stream of (task name, args, kwargs); the runner takes as many as it needs. ``bare``: the
        plain-``celery.Task`` twins of the harness tasks (lab/probes.py), for BENCH_BARE=1 sides; ``names``:
        an app's own tasks by workload (the stock side's)."""
        if self.task is not None:
            return _templated(*self.task)
        if names and self.name in names:
            return itertools.repeat((names[self.name], (), {}))
        if self.name in BENCH_TASKS:
            return itertools.repeat((BENCH_TASKS[self.name][int(bare)], (), {}))
        return _mixed()


def _templated(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Call]:
    for i in itertools.count():
        unique = uuid.uuid4().hex  # "{id}": distinct per call (the runner lets Celery choose the task id)
        yield (name, tuple(fill(list(args), unique, i)), fill(kwargs, unique, i))


def task_workload(name: str, args_json: str | None, tasks: int = 500) -> Workload:
    """``--task NAME --args JSON``: a JSON list is the positional arguments, an object the keyword ones."""
    args, kwargs = parse_call(args_json)
    return Workload(
        f"task:{name}",
        f"the app's own task {name} with {args_json or 'no arguments'}",
        tasks,
        task=(name, tuple(args), kwargs),
    )


def _mixed() -> Iterator[Call]:
    # The app's own tasks, none of which needs rows to exist first (SQLite does not enforce the user FK).
    for i in itertools.count():
        kind = i % 4
        if kind == 0:
            yield ("app.tasks.email.send_welcome_email", (1, f"bench{i}@example.com"), {})
        elif kind == 1:
            yield ("app.tasks.ai.process_ai_completion", (uuid.uuid4().hex, f"Summarise ticket {i}", 1), {})
        elif kind == 2:
            yield ("app.tasks.workflows.process_item", (i,), {})
        else:
            yield ("app.tasks.workflows.aggregate_results", ([1, 2, 3, i],), {})


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("noop", "a task that does nothing: Celery's and the broker's own cost per task", 3000),
        Workload("io", "a task that sleeps BENCH_SLEEP_MS (default 20 ms): I/O-bound, pool slots are the limit", 800),
        Workload("cpu", "BENCH_CPU_ITERS (default 40000) rounds of integer arithmetic: CPU-bound", 800),
        Workload(
            "mixed",
            "the app's own tasks in turn: welcome email (SMTP sink), AI completion (AI stub + SQLite), "
            "process_item, aggregate_results",
            600,
            smtp=True,
            ai_stub=True,
            reference_only=True,
        ),
    )
}


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ProfileError(f"unknown workload {name!r}: choose one of {', '.join(WORKLOADS)}") from None
