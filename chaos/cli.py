"""``lab chaos``: worker-kill chaos experiments with a loss ledger (run, list, suite). See docs/chaos.md.

Exit codes: 0 every verdict passed; 1 a verdict failed (loss where none was allowed, or a control that did
not catch its loss); 2 bad input (unknown experiment, invalid file, bad profile) or environment; 130
interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from chaos.experiment import ExperimentError, list_experiments, load_experiment
from chaos.junit import experiment_suite, matrix_suites
from chaos.matrix import TAGS, cell_experiment, select
from chaos.matrix_doc import cell_text, data_path, load_data, merge
from chaos.matrix_doc import write as write_doc
from chaos.matrix_figures import disagreements
from chaos.matrix_run import run_matrix
from chaos.report import ConsoleReporter, verdict_table
from chaos.runner import run_experiment, run_suite
from lab.apps import AppTarget
from lab.brokerview import BROKERS
from lab.ci_results import publish
from lab.cli_options import AppOpt, AppPathOpt
from lab.console import check_outputs, console, out, user_errors, write_json
from lab.probes import PROBES, Probe
from lab.profiles import load_profile
from lab.rundirs import run_dir_for

SUITE_TAG = "ci"

chaos_app = typer.Typer(
    name="chaos",
    help="Worker-kill chaos experiments with a loss ledger: `run` one, `list` them, `suite` runs the CI set, "
    "`matrix` measures what each setting loses under each fault (docs/reliability-matrix.md). "
    "Exit codes: 0 every verdict passed; 1 a verdict failed (loss where none was allowed, or a control that "
    "did not catch its loss); 2 bad input or environment; 130 interrupted. See docs/chaos.md.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

ExperimentArg = Annotated[
    str,
    typer.Argument(
        help="Experiment: a name under chaos/experiments/ (see `lab chaos list`) or a path to a .json file."
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Config profile (a name under configs/ or a .toml path) instead of the experiment's own; "
        "the experiment's overrides still apply on top. With --app: a .toml file of Celery settings laid over "
        "your app's (e.g. task_acks_late = false); the experiment's overrides, reference settings, do not apply.",
    ),
]
ProbeOpt = Annotated[
    str | None,
    typer.Option(
        help=f"The probe instead of the experiment's: {', '.join(PROBES)}, or one of the app's tasks as JSON, "
        '{"task": "billing.tasks.charge", "kwargs": {"order": "{id}"}} ("{id}": each message\'s task id, '
        '"{index}": its number). Recorded through signal hooks: the task\'s code is unchanged.',
    ),
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the journal JSON here.")]
JunitOpt = Annotated[
    Path | None,
    typer.Option("--junit", help="Also write a JUnit XML report here (a testcase per verdict; CI systems show it)."),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        help="Run on this broker instead of the experiment's own: redis, or rabbitmq (a RabbitMQ node of the "
        "lab's own; needs the Debian package rabbitmq-server). Only experiments whose configuration.brokers "
        "lists it can (`lab chaos list`).",
    ),
]


def _check_broker(broker: str | None) -> None:
    if broker is not None and broker not in BROKERS:
        raise ExperimentError(f"--broker {broker}: choose one of {', '.join(BROKERS)}")


def _check_profile(profile: str | None) -> None:
    if profile is not None:
        load_profile(profile)  # bad names fail here, before anything starts


def _target(app: str | None, app_path: Path | None, config: str | None) -> AppTarget:
    """The app to run (imported once here: a bad one fails before anything starts) and its profile."""
    target = AppTarget.from_options(app, app_path, config)
    if target.reference:
        _check_profile(config)
    return target


def _probe(text: str | None) -> Probe | None:
    if text is None or text in PROBES:
        return text
    try:
        probe = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExperimentError(
            f"--probe {text!r}: neither a built-in probe ({', '.join(PROBES)}) nor JSON ({exc}); "
            'e.g. --probe \'{"task": "billing.tasks.charge", "kwargs": {"order": "{id}"}}\''
        ) from None
    if not isinstance(probe, dict):
        raise ExperimentError(f'--probe {text!r}: a task probe is a JSON object with a "task" key')
    return probe


@chaos_app.command("run")
def run_cmd(
    experiment: ExperimentArg,
    config: ProfileOpt = None,
    json_path: JsonOpt = None,
    broker: BrokerOpt = None,
    junit: JunitOpt = None,
    app: AppOpt = None,
    app_path: AppPathOpt = None,
    probe: ProbeOpt = None,
) -> None:
    """Run one experiment: start a ledger and a Stack, load it, inject the faults, check the ledger.

    Shows live progress, prints the verdict table and writes the journal to
    results/chaos-<experiment>-<ts>/journal.json (keys: experiment, broker, app, config, faults, ledger,
    redelivery_s, leftovers, expected, verdict, ...). Exits 1 when the verdict is fail."""
    with user_errors():
        _check_broker(broker)
        target = _target(app, app_path, config)
        exp = load_experiment(experiment).on_broker(broker).with_probe(_probe(probe)).check_app(target)
        check_outputs(json_path=json_path, junit=junit)
        run_dir = run_dir_for(f"chaos-{exp.name}")
        console.print(
            f"[bold]{exp.name}[/] on {exp.config['broker']}: {exp.title} (expected: {exp.expected}) -> {run_dir}"
        )
        reporter = ConsoleReporter(console)
        with reporter.live():
            journal = run_experiment(exp, run_dir, reporter, profile=config, app=target)
        out.print(verdict_table(journal))
        write_json(json_path, journal)
        publish(junit, f"lab chaos run {exp.name}", [experiment_suite(journal)])
        console.print(f"journal: {run_dir / 'journal.json'}")
        if journal["verdict"] != "pass":
            raise typer.Exit(1)


@chaos_app.command("list")
def list_cmd(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the experiments under chaos/experiments/ with their tags, expectation and faults."""
    with user_errors():
        rows = []
        for name in list_experiments():
            exp = load_experiment(name)
            rows.append(
                {
                    "name": name,
                    "title": exp.title,
                    "expected": exp.expected,
                    "tags": exp.tags,
                    "faults": [f["provider"]["kind"] for f in exp.faults],
                    "brokers": exp.brokers,
                    "tasks": exp.config["tasks"],
                }
            )
        if json_out:
            out.print_json(json.dumps(rows))
            return
        table = Table(title=f"chaos experiments (`lab chaos suite` runs those tagged {SUITE_TAG!r})")
        table.add_column("name", no_wrap=True)
        for col in ("expected", "tags", "faults", "brokers", "tasks", "title"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["name"],
                r["expected"],
                ",".join(r["tags"]),
                ",".join(r["faults"]) or "-",
                ",".join(r["brokers"]),
                str(r["tasks"]),
                r["title"],
            )
        out.print(table)


@chaos_app.command("suite")
def suite_cmd(
    config: ProfileOpt = None,
    tag: Annotated[str, typer.Option(help="Run the experiments carrying this tag.")] = SUITE_TAG,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the suite summary JSON here.")] = None,
    broker: BrokerOpt = None,
    junit: JunitOpt = None,
    app: AppOpt = None,
    app_path: AppPathOpt = None,
) -> None:
    """Run the CI set (experiments tagged `ci`: each fault, the visibility-timeout duplicates, and the controls
    that must catch loss). Experiments that share a configuration share one Stack. With --broker, the tagged
    experiments that can run on that broker run on it; with --app, those that mean something on your app (not
    the reference app's controls or email probe); the rest are listed as skipped, with why. Writes every
    journal and suite.json under results/chaos-suite-<ts>/; exits 1 if any verdict failed."""
    with user_errors():
        _check_broker(broker)
        target = _target(app, app_path, config)
        check_outputs(json_path=json_path, junit=junit)
        tagged = [e for e in map(load_experiment, list_experiments()) if tag in e.tags]
        if not tagged:
            raise ExperimentError(f"no experiment is tagged {tag!r}; see `lab chaos list`")
        why_not = {
            e.name: "specific to another broker" for e in tagged if broker is not None and broker not in e.brokers
        }
        why_not |= {e.name: why for e in tagged if e.name not in why_not and (why := e.not_for(target))}
        experiments = [e.on_broker(broker) for e in tagged if e.name not in why_not]
        skipped = sorted(why_not)
        if not experiments:
            raise ExperimentError(f"no experiment tagged {tag!r} can run here ({why_not}); see `lab chaos list`")
        run_dir = run_dir_for("chaos-suite")
        console.print(f"chaos suite ({tag}) on {target.spec}: {', '.join(e.name for e in experiments)} -> {run_dir}")
        for name, why in sorted(why_not.items()):
            console.print(f"skipped {name}: {why}", highlight=False)
        reporter = ConsoleReporter(console)
        with reporter.live():
            journals = run_suite(experiments, run_dir, reporter, profile=config, app=target)
        table = Table(title="chaos suite")
        table.add_column("experiment", no_wrap=True)
        for col in ("broker", "expected", "verdict", "lost", "duplicated", "recovered", "redelivery max s", "why"):
            table.add_column(col)
        for j in journals:
            ledger = j.get("ledger") or {}
            colour = "green" if j["verdict"] == "pass" else "red"
            table.add_row(
                j["experiment"],
                str(j.get("broker", "-")),
                j["expected"],
                f"[{colour}]{j['verdict']}[/]",
                str(ledger.get("lost", "-")),
                str(ledger.get("duplicated", "-")),
                str(ledger.get("recovered", "-")),
                str((j.get("redelivery_s") or {}).get("max", "-")),
                j["reason"],
            )
        out.print(table)
        summary = {
            "tag": tag,
            "broker": broker,
            "app": target.spec,
            "skipped": skipped,
            "skipped_why": why_not,
            "run_dir": str(run_dir),
            "verdict": "pass" if all(j["verdict"] == "pass" for j in journals) else "fail",
            "experiments": journals,
        }
        (run_dir / "suite.json").write_text(json.dumps(summary, indent=2))
        write_json(json_path, summary)
        publish(junit, f"lab chaos suite --tag {tag}", [experiment_suite(j) for j in journals])
        console.print(f"suite: {summary['verdict']} ({run_dir / 'suite.json'})")
        if summary["verdict"] != "pass":
            raise typer.Exit(1)


def _committed(path: Path) -> dict:
    try:
        data = load_data(path)
    except (OSError, ValueError) as exc:
        data, why = None, str(exc)
    else:
        why = "no such file"
    if data is None:
        raise ExperimentError(f"--against {path}: cannot read the matrix data {data_path(path)}: {why}")
    return data


@chaos_app.command("matrix")
def matrix_cmd(
    brokers: Annotated[
        str | None, typer.Option(help="Comma-separated: redis, rabbitmq (needs rabbitmq-server). Default: redis.")
    ] = None,
    faults: Annotated[str | None, typer.Option(help="Comma-separated fault ids (default: all; see the doc).")] = None,
    configs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated config ids (default: all). With --app: `app` and .toml files of Celery "
            "settings (default: app)."
        ),
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, max=10, help="Runs per cell; repeats are never averaged.")] = 2,
    tag: Annotated[
        str | None, typer.Option(help=f"Only the cells tagged so ({', '.join(TAGS)}: each fault and config once).")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every cell with every journal here.")] = None,
    doc: Annotated[
        Path | None,
        typer.Option(
            help="Write the doc here (e.g. docs/reliability-matrix.md) and its data beside it (.json), keeping "
            "the cells of an existing doc that this run did not measure."
        ),
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(help="Compare with a committed matrix (its .md or .json): a cell that contradicts it fails."),
    ] = None,
    junit: JunitOpt = None,
    app: AppOpt = None,
    app_path: AppPathOpt = None,
    probe: ProbeOpt = None,
) -> None:
    """Measure the reliability matrix: one short experiment per broker x fault x config cell, --repeat times.

    Per cell: lost, re-run, completed twice, redelivery p50/max and parked (with when the broker gives them
    back). Writes results/chaos-matrix-<ts>/matrix.json (keys: runs, cells; a cell: id, title, outcome, runs
    (figures per repeat), why for n/a). With --app the configs are `app` (your app as it is) and .toml files
    of Celery settings laid over it (--configs app,acks-early.toml; a cell's config id is the file's name),
    every fault runs on each, and --probe can name one of your tasks; --tag and --doc (the reference app's
    published matrix) do not apply, --against takes an earlier run's --json. Exit 0 when every cell measured
    something (its fault hit in-flight work) and none contradicts --against; 1 otherwise; 2 bad input."""
    with user_errors():
        target = AppTarget.from_options(app, app_path)
        if not target.reference and doc is not None:
            raise ExperimentError(
                "--doc writes the reference app's published matrix; with --app use --json (and --junit) instead"
            )
        task_probe = _probe(probe)
        if task_probe is not None and target.reference:
            raise ExperimentError("--probe needs --app: the reference matrix measures with its sleep probe")
        cells = select(brokers, faults, configs, tag, app=target)
        if not target.reference:  # the probe is a valid template of one of the app's tasks
            cell_experiment(cells[0], 1, task_probe).check_app(target)
        committed = _committed(against) if against is not None else None
        check_outputs(json_path=json_path, doc=doc, junit=junit)
        run_dir = run_dir_for("chaos-matrix")
        runnable = [c for c in cells if c.not_applicable is None]
        console.print(
            f"chaos matrix: {len(cells)} cells ({len(cells) - len(runnable)} n/a) x {repeat} repeats -> {run_dir}"
        )
        result = run_matrix(cells, repeat, run_dir, console, probe=task_probe)
        journals = result.pop("journals")
        (run_dir / "matrix.json").write_text(json.dumps(result, indent=2))
        write_json(json_path, {**result, "journals": journals})
        table = Table(title="chaos matrix")
        for col in ("cell", "outcome", "figures"):
            table.add_column(col, no_wrap=col == "cell")
        for cell_id, cell in result["cells"].items():
            colour = {"safe": "green", "n/a": "dim", "invalid": "red", "unstable": "yellow"}.get(cell["outcome"], "red")
            table.add_row(cell_id, f"[{colour}]{cell['outcome']}[/]", cell_text(cell))
        out.print(table)
        budget = result["runs"][0]["budget"]
        console.print(
            f"{budget['runs']} runs in {budget['elapsed_s'] / 60:.1f} min (median {budget['run_wall_s_median']} s "
            f"a run; load average {' '.join(map(str, budget['load_avg_end']))})"
        )
        if doc is not None:
            write_doc(doc, merge(load_data(doc), result))
            console.print(f"doc: {doc} (data {data_path(doc)})")
        problems = [f"{k}: invalid ({cell_text(c)})" for k, c in result["cells"].items() if c["outcome"] == "invalid"]
        if committed is not None:
            problems += disagreements(result["cells"], committed["cells"])
        publish(junit, "lab chaos matrix", matrix_suites(result, run_dir, problems))
        for problem in problems:
            console.print(f"[red]{problem}[/]")
        if problems:
            raise typer.Exit(1)
