"""``lab bench``: A/B benchmarks of Celery config profiles, with honest statistics (docs/bench.md)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from bench import config as bench_config
from bench import runner, startup
from bench.figures import compare_runs
from bench.regression import regression_checks
from bench.report import rich_table, write_outputs
from bench.stats import ALPHA
from bench.workloads import WORKLOADS, get_workload, task_workload
from lab.apps import AppTarget
from lab.ci_results import publish
from lab.cli_options import AppOpt, AppPathOpt, ArgsOpt, TaskOpt
from lab.console import check_outputs, console, out, user_errors
from lab.errors import LabError
from lab.junit import Case, Suite
from lab.rundirs import run_dir_for


class BenchInputError(LabError):
    """A bad bench input file or option: ``user_errors`` reports it as one line and exits 2."""


class DefaultRunGroup(TyperGroup):
    """``lab bench A B`` is ``lab bench run A B``: anything that is not a sub-command name goes to ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=DefaultRunGroup,
    help="A/B benchmarks of config profiles: `lab bench A B` (= `lab bench run A B`), `compare`, `matrix`. "
    "See docs/bench.md.",
    no_args_is_help=True,
)

WorkloadOpt = Annotated[
    str, typer.Option("--workload", "-w", help=f"Fixed-size workload: {', '.join(WORKLOADS)}.", show_default=True)
]
RepeatOpt = Annotated[
    int,
    typer.Option(help=f"Repetitions per side (at least {bench_config.MIN_REPEAT}); each on a fresh stack and broker."),
]
TasksOpt = Annotated[
    int | None, typer.Option(help="Backlog size for the throughput phase (default: per workload, several seconds).")
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the bench document (JSON) here.")]
RateOpt = Annotated[
    float | None,
    typer.Option(help="Latency phase rate in tasks/s (default: 40% of the first run's throughput, for every run)."),
]
LatencyOpt = Annotated[float, typer.Option(help="Latency phase length in seconds.")]
RerunsOpt = Annotated[
    int, typer.Option(help="Re-run a repetition up to this many times when other processes disturbed it.")
]
DisturbOpt = Annotated[
    float, typer.Option(help="A run is disturbed when other processes used more than this % of the machine's CPU.")
]
AlphaOpt = Annotated[float, typer.Option(help="Significance level of the t-test.")]
WorkersOpt = Annotated[int, typer.Option(help="celery worker processes per stack.")]
BenchJunitOpt = Annotated[
    Path | None,
    typer.Option(
        "--junit", help="Write a JUnit XML report: a testcase per gated figure of each comparison, and tasks."
    ),
]
FailOnRegressionOpt = Annotated[
    float | None,
    typer.Option(
        min=0,
        help="Exit 1 when a side's throughput or end-to-end p50/p95 is significantly worse than the first side's "
        "by more than this percent.",
    ),
]


def _command() -> str:
    return "lab " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def regression_suite(title: str, figures: dict[str, Any], pct: float | None, props: dict[str, object]) -> Suite:
    """A testcase per gated figure (throughput, e2e p50/p95); with ``pct`` a significant slowdown beyond it is a
    failure, without it every case only reports its verdict."""
    checks = regression_checks(figures, pct)
    cases = [Case(c.figure, "bench", failure=c.message if c.regressed else None, output=c.message) for c in checks]
    return Suite(title, cases, props)


def _execute(
    cfg: bench_config.BenchConfig,
    json_path: Path | None,
    junit: Path | None = None,
    fail_on_regression: float | None = None,
) -> None:
    with user_errors():
        check_outputs(json_path=json_path, junit=junit)
        bench_config.ensure_inputs(cfg)
        run_dir = run_dir_for("bench")
        total = cfg.repeat * len(cfg.sides)
        console.print(
            f"lab bench: {', '.join(s.spec for s in cfg.sides)} on {cfg.workload.name}, {cfg.repeat} repetitions "
            f"per side, backlog {cfg.backlog}; output in {run_dir}",
            highlight=False,
        )
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console, transient=True) as progress:
            bar = progress.add_task("starting", total=total)

            def say(msg: str, done: int) -> None:
                progress.update(bar, description=msg, completed=done)
                if not console.is_terminal and ("done" in msg or "disturbed" in msg):
                    console.print(msg, highlight=False)  # a log file gets one line per run instead of a live bar

            doc = runner.run_bench(cfg, run_dir, say, command=_command())
        show(doc)
        paths = write_outputs(doc, run_dir)
        if json_path:
            json_path.write_text(paths["json"].read_text())
        load = doc["load_average"]
        console.print(
            f"{len(doc['runs'])} runs in {doc['duration_s'] / 60:.1f} min; load average {load['start']} at the "
            f"start, {load['end']} at the end",
            highlight=False,
        )
        console.print(f"results: {paths['json']}, {paths['markdown']}, {paths['png']}", highlight=False)
        disturbed = [r for r in doc["runs"] if r["disturbed"]]
        if disturbed:
            console.print(
                f"[yellow]warning:[/] {len(disturbed)} run(s) kept although other processes used more than "
                f"{cfg.disturbance_limit:g}% of the CPU (see disturbance_pct); consider running again on a quieter "
                "machine or with more --reruns"
            )
        failed = sum(r["figures"]["failures"] for r in doc["runs"])
        suites = [
            regression_suite(f"bench {c['b']} vs {c['a']}", c["figures"], fail_on_regression, {"bench": paths["json"]})
            for c in doc["comparisons"]
        ]
        tasks = Case("tasks", "bench", failure=f"{failed} task(s) failed or were lost" if failed else None)
        suites.append(Suite("bench tasks", [tasks], {"bench": paths["json"]}))
        publish(junit, f"lab bench {cfg.workload.name}", suites)
        regressed = [c.name for suite in suites[:-1] for c in suite.cases if c.failure]
        if failed:
            console.print(f"[red]{failed} task(s) failed or were lost during the runs[/]: see the run logs")
        if regressed:
            console.print(f"[red]significantly slower by more than {fail_on_regression:g}%:[/] {', '.join(regressed)}")
        if failed or regressed:
            raise typer.Exit(1)


def _wide(console: Console) -> Console:
    # A log file or pipe gets the whole table rather than 80 columns of wrapped cells.
    return console if console.is_terminal else Console(width=170)


def show(doc: dict[str, Any]) -> None:
    specs = {s["label"]: s["spec"] for s in doc["sides"]}
    for c in doc["comparisons"]:
        title = f"lab bench: {c['b']} vs {c['a']} ({doc['workload']['name']}, {doc['repeat']} repetitions per side)"
        table = rich_table(c["figures"], specs.get(c["a"], c["a"]), specs.get(c["b"], c["b"]), title)
        _wide(out).print(table)


@bench_app.command("run")
def run_cmd(
    a: Annotated[str, typer.Argument(help="Side A: a profile (configs/NAME.toml or a path), optionally "
                                          "PROFILE:NAME=VALUE,... with settings or BENCH_* knobs; or stock "
                                          "(plain Celery, same reliability settings; stock:celery_setting=VALUE).")],
    b: Annotated[str, typer.Argument(help="Side B, same form as A (may equal A: an A/A run).")],
    workload: WorkloadOpt = "noop",
    repeat: RepeatOpt = 5,
    tasks: TasksOpt = None,
    json_path: JsonOpt = None,
    rate: RateOpt = None,
    latency_s: LatencyOpt = 3.0,
    reruns: RerunsOpt = 1,
    disturbance_limit: DisturbOpt = 10.0,
    alpha: AlphaOpt = ALPHA,
    workers: WorkersOpt = 1,
    app: AppOpt = None,
    app_path: AppPathOpt = None,
    task: TaskOpt = None,
    args: ArgsOpt = None,
    junit: BenchJunitOpt = None,
    fail_on_regression: FailOnRegressionOpt = None,
) -> None:  # fmt: skip
    """Benchmark B against A: interleaved repetitions on fresh stacks; throughput, latency, cost, verdicts.

    With --app each side is `app` (your app's own settings) or a .toml of Celery settings laid over them;
    finished tasks are found through the result backend (no latency phase). Exit 0 when done, 1 if tasks
    failed during the runs (or, with --fail-on-regression, B is significantly slower beyond it), 2 on bad
    input."""
    _bench(
        [(a, "A"), (b, "B")],
        json_path,
        workload=workload, repeat=repeat, tasks=tasks, rate=rate, latency_s=latency_s, reruns=reruns,
        disturbance_limit=disturbance_limit, alpha=alpha, workers=workers, app=app, app_path=app_path,
        task=task, args=args, junit=junit, fail_on_regression=fail_on_regression,
    )  # fmt: skip


@bench_app.command("startup")
def startup_cmd(
    repeat: Annotated[int, typer.Option(min=1, max=20, help="Stack starts, one after another.")] = 3,
    json_path: JsonOpt = None,
) -> None:
    """Time to first data: from `lab up` starting (its defaults) to the URLs printed, Prometheus' first
    scrape and the first non-empty / above-0 succeeded rate after one sign-up. Medians and ranges over
    --repeat starts, with the load average (docs/benchmarks.md). Exit 0 when every round saw data, 2 on bad
    input."""
    with user_errors():
        check_outputs(json_path=json_path)
        run_dir = run_dir_for("bench-startup")
        doc = startup.run(run_dir, repeat)
        (run_dir / "startup.json").write_text(json.dumps(doc, indent=2))
        if json_path is not None:
            json_path.write_text(json.dumps(doc, indent=2))
    table = Table(title=f"time to first data, {repeat} starts of `lab up` (seconds)")
    for col in ("milestone", "median", "min", "max"):
        table.add_column(col, justify="left" if col == "milestone" else "right")
    for key, fig in doc["summary"].items():
        table.add_row(key.removesuffix("_s"), f"{fig['median']:.2f}", f"{fig['min']:.2f}", f"{fig['max']:.2f}")
    out.print(table)
    load = doc["load_average"]
    out.print(f"load average {' '.join(map(str, load['before']))} before, {' '.join(map(str, load['after']))} after")
    out.print(f"-> {run_dir / 'startup.json'}")


@bench_app.command("matrix")
def matrix_cmd(
    profiles: Annotated[list[str], typer.Argument(help="Two or more sides; each is compared with the first.")],
    workload: WorkloadOpt = "noop",
    repeat: RepeatOpt = 5,
    tasks: TasksOpt = None,
    json_path: JsonOpt = None,
    rate: RateOpt = None,
    latency_s: LatencyOpt = 3.0,
    reruns: RerunsOpt = 1,
    disturbance_limit: DisturbOpt = 10.0,
    alpha: AlphaOpt = ALPHA,
    workers: WorkersOpt = 1,
    app: AppOpt = None,
    app_path: AppPathOpt = None,
    task: TaskOpt = None,
    args: ArgsOpt = None,
    junit: BenchJunitOpt = None,
    fail_on_regression: FailOnRegressionOpt = None,
) -> None:
    """Benchmark several profiles against the first one, all interleaved in the same rounds (ABC, BCA, ...)."""
    labels: list[str] = []
    for spec in profiles:
        label = spec
        while label in labels:
            label += "'"
        labels.append(label)
    _bench(
        list(zip(profiles, labels, strict=True)),
        json_path,
        workload=workload, repeat=repeat, tasks=tasks, rate=rate, latency_s=latency_s, reruns=reruns,
        disturbance_limit=disturbance_limit, alpha=alpha, workers=workers, app=app, app_path=app_path,
        task=task, args=args, junit=junit, fail_on_regression=fail_on_regression,
    )  # fmt: skip


def _bench(
    sides: list[tuple[str, str]],
    json_path: Path | None,
    *,
    workload: str,
    app: str | None,
    app_path: Path | None,
    task: str | None,
    args: str | None,
    junit: Path | None,
    fail_on_regression: float | None,
    **knobs: Any,
) -> None:
    """Validate the sides and knobs (bad input: one line, exit 2), then run and report."""
    with user_errors():
        target = AppTarget.from_options(app, app_path)
        if args is not None and task is None:
            raise BenchInputError("--args goes with --task NAME (the task to bench)")
        cfg = bench_config.BenchConfig(
            sides=[bench_config.parse_side(spec, label, target) for spec, label in sides],
            workload=task_workload(task, args) if task else get_workload(workload),
            **knobs,
        )
        cfg.validate()
    _execute(cfg, json_path, junit, fail_on_regression)


def load_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchInputError(f"{path} does not exist: give a bench.json written by `lab bench`") from None
    except (OSError, ValueError) as exc:
        raise BenchInputError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != "lab-bench/1" or not doc.get("runs"):
        raise BenchInputError(f"{path} is not a `lab bench` result (no schema lab-bench/1 with runs)")
    return doc


def pick_side(doc: dict[str, Any], side: str | None, path: Path) -> str:
    labels = [s["label"] for s in doc["sides"]]
    if side is None:
        return labels[1] if len(labels) > 1 else labels[0]
    if side in labels:
        return side
    if side.lower() in ("a", "b") and len(labels) >= 2:
        return labels[0 if side.lower() == "a" else 1]
    raise BenchInputError(f"{path} has no side {side!r}; its sides are {', '.join(labels)}")


@bench_app.command("compare")
def compare_cmd(
    old: Annotated[Path, typer.Argument(help="An earlier bench.json (the baseline).")],
    new: Annotated[Path, typer.Argument(help="A later bench.json.")],
    side: Annotated[
        str | None, typer.Option(help="Which side of each file to compare (a label, or a/b); default: B.")
    ] = None,
    json_path: JsonOpt = None,
    alpha: AlphaOpt = ALPHA,
    fail_on_regression: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Exit 1 when throughput or end-to-end p50/p95 is significantly worse by more than this percent "
            "(a pull request against main's stored bench.json).",
        ),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option(help="Write a JUnit XML report: one testcase per regression check.")
    ] = None,
) -> None:
    """Compare saved results: one side of OLD against the same side of NEW (unpaired statistics).

    Exit 0 when done (with --fail-on-regression: when no gated figure regressed), 1 on a regression, 2 on
    bad input."""
    with user_errors():
        check_outputs(json_path=json_path, junit=junit)
        figures = _compare(old, new, side, json_path, alpha)
        if fail_on_regression is None:
            return
        title = f"lab bench compare {new.name} vs {old.name}"
        suite = regression_suite(title, figures, fail_on_regression, {"old": old, "new": new})
        publish(junit, title, [suite])
        for c in suite.cases:
            console.print(f"[{'red' if c.failure else 'green'}]{c.output}[/]")
    if any(c.failure for c in suite.cases):
        raise typer.Exit(1)


def _compare(old: Path, new: Path, side: str | None, json_path: Path | None, alpha: float) -> dict[str, dict[str, Any]]:
    old_doc, new_doc = load_doc(old), load_doc(new)
    a_label, b_label = pick_side(old_doc, side, old), pick_side(new_doc, side, new)
    a_runs, b_runs = runner.side_runs(old_doc, a_label), runner.side_runs(new_doc, b_label)
    if len(a_runs) < 2 or len(b_runs) < 2:
        raise BenchInputError("each file needs at least two runs of the compared side")
    for key, get in (("workload", lambda d: d["workload"]["name"]), ("tasks", lambda d: d["tasks"])):
        if get(old_doc) != get(new_doc):
            console.print(f"[yellow]warning:[/] the files differ in {key}: {get(old_doc)} vs {get(new_doc)}")
    figures = compare_runs(a_runs, b_runs, paired=False, alpha=alpha)
    specs_old = {s["label"]: s["spec"] for s in old_doc["sides"]}
    specs_new = {s["label"]: s["spec"] for s in new_doc["sides"]}
    title = f"lab bench compare: {new.name} vs {old.name}"
    a_desc = f"{old} side {a_label} ({specs_old[a_label]})"
    b_desc = f"{new} side {b_label} ({specs_new[b_label]})"
    _wide(out).print(rich_table(figures, a_desc, b_desc, title))
    if json_path:
        doc = {"schema": "lab-bench-compare/1", "old": str(old), "new": str(new), "a": a_label, "b": b_label,
               "paired": False, "alpha": alpha, "figures": figures}  # fmt: skip
        json_path.write_text(json.dumps(doc, indent=2))
    return figures
