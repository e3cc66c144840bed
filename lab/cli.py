"""``lab``: run the reference Celery system locally, load it, break it, watch it and benchmark it.

`--app MODULE:ATTR` (and `--app-path DIR`, or LAB_APP / LAB_APP_PATH) on `up`, `chaos run/suite/matrix`,
`bench`, `load broker-direct` and `audit` points them at your own Celery app instead, on the lab's own broker
and backend (README: "Use it on your own app"); `--junit PATH` writes JUnit XML for your CI (docs/ci.md).

Exit codes: 0 success; 1 a run finished and failed its checks (a threshold, a verdict, a task in the wrong
final state); 2 bad input or an environment problem (unknown profile, invalid setting, missing binary, port
taken, unreachable host); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from audit.cli import audit_command
from bench.cli import bench_app
from chaos.cli import chaos_app
from dashboards.cli import dashboards_app, report_command
from lab.apps import AppTarget
from lab.cli_options import AppOpt, AppPathOpt
from lab.console import EXIT_INPUT, EXIT_INTERRUPTED, console, fail, out, user_errors
from lab.profiles import list_profiles, profile_description
from lab.rundirs import results_dir, run_dir_for
from lab.stack import Stack, StackConfig
from loadtests.cli import load as load_command
from orchestration.cli import dashboards_check, demo

app = typer.Typer(
    name="lab",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    str,
    typer.Option("--config", "-c", help="Config profile: a name under configs/ (e.g. reference) or a .toml path."),
]


def print_urls(stack: Stack) -> None:
    table = Table(title="celery-lab stack", show_header=True)
    table.add_column("member")
    table.add_column("where")
    table.add_column("pid", justify="right")
    for name, url in stack.urls.items():
        member = {"smtp_control": "smtp", "rabbitmq_management": "rabbitmq"}.get(name, name)
        proc = stack.procs.get(member)
        table.add_row(name, url, str(proc.pid) if proc else "-")
    if "smtp" in stack.ports:
        table.add_row("smtp (SMTP)", f"127.0.0.1:{stack.ports['smtp']}", str(stack.procs["smtp"].pid))
    for name, w in stack.workers.items():
        table.add_row(f"worker {name}", w.hostname, f"{w.proc.pid} (pool {stack.pool_children(name)})")
    if "beat" in stack.procs:
        table.add_row("beat", "-", str(stack.procs["beat"].pid))
    console.print(table)
    console.print(f"logs and data: {stack.run_dir}")


@app.command()
def up(
    config: ConfigOpt = "reference",
    workers: Annotated[int, typer.Option(min=1, max=16, help="Number of celery worker processes.")] = 1,
    beat: Annotated[bool, typer.Option(help="Run celery beat.")] = True,
    flower: Annotated[bool, typer.Option(help="Run Flower.")] = True,
    api_port: Annotated[int | None, typer.Option(min=1, max=65535, help="API port (default: a free one).")] = None,
    broker_url: Annotated[
        str | None, typer.Option(help="Use this Redis (e.g. $CELERY_BROKER_URL) instead of starting one.")
    ] = None,
    result_backend: Annotated[
        str | None,
        typer.Option(help="Use this result backend (a URL Celery takes) instead of the broker Redis's db 1."),
    ] = None,
    aof: Annotated[bool, typer.Option(help="Start redis-server with AOF persistence.")] = False,
    broker: Annotated[
        str,
        typer.Option(
            help="The Celery broker: redis, or rabbitmq (a RabbitMQ node of the lab's own on free ports; Redis "
            "still runs as result backend and cache)."
        ),
    ] = "redis",
    prometheus: Annotated[
        bool, typer.Option(help="Run the events exporter and Prometheus (when the prometheus binary is installed).")
    ] = True,
    app_spec: AppOpt = None,
    app_path: AppPathOpt = None,
) -> None:
    """Start the whole stack in the foreground, print every URL, stop it cleanly on Ctrl-C.

    With --app: your app's workers (and beat, Flower, the exporter, Prometheus) on the lab's broker and backend;
    the API, SMTP sink and AI stub belong to the reference app and do not start. --config is then a .toml of
    Celery settings laid over your app's."""
    with user_errors():
        target = AppTarget.from_options(app_spec, app_path, None if config == "reference" else config)
        reference = target.reference
        cfg = StackConfig(
            run_dir=run_dir_for("up"),
            profile=config if reference else "reference",
            app=target,
            api=reference,
            smtp=reference,
            ai_stub=reference,
            workers=workers,
            beat=beat,
            flower=flower,
            api_port=api_port,
            broker_url=broker_url,
            result_backend=result_backend,
            redis_aof=aof,
            broker=broker,
            prometheus=prometheus and shutil.which("prometheus") is not None,
        )
        with Stack(cfg) as stack:
            print_urls(stack)
            stack.mark("urls_s")
            if reference:
                api = stack.urls["api"]
                console.print(
                    f"try: curl -s -XPOST {api}/api/v1/users -H 'content-type: application/json' "
                    '-d \'{"email":"ada@example.com","name":"Ada"}\'',
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                console.print(f"{target.spec}: workers on {stack.settings.celery_broker_url}", highlight=False)
            console.print("Grafana: docker compose up grafana (see README); Ctrl-C stops everything.", highlight=False)
            watch(stack)


def watch(stack: Stack) -> None:
    """Stay in the foreground; report members that die (they are not restarted: that is chaos' job). Until a
    dashboard's throughput panel has data, also watch for it: the state's "startup" records when it had a
    series (first_rate_s) and when it first read above 0 (first_success_s), as docs/benchmarks.md reports."""
    reported: set[str] = set()
    while True:
        if stack.prometheus is not None and "first_success_s" not in stack.startup:
            seen = len(stack.startup)
            stack.note_first_data()
            if len(stack.startup) != seen:
                stack.write_state()
        for name, proc in stack.procs.items():
            if name not in reported and not proc.alive():
                reported.add(name)
                console.print(f"[red]{name} (pid {proc.pid}) exited with {proc.returncode}[/]; see {proc.log_path}")
        time.sleep(0.5)


def _live_states() -> list[dict[str, Any]]:
    found = []
    for state in sorted(results_dir().glob("*/stack.json")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(state.read_text())
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(data["lab_pid"]), 0)
                found.append(data)
    return found


@app.command()
def status(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show what the running stacks (started by `lab up` or `lab demo`) have: members, PIDs, health."""
    stacks = _live_states()
    for data in stacks:
        api = data["urls"].get("api")
        try:
            data["health"] = httpx.get(f"{api}/health", timeout=2).json() if api else None
        except httpx.HTTPError as exc:
            data["health"] = {"status": "unreachable", "error": str(exc)}
    if json_out:
        out.print_json(json.dumps(stacks))
        return
    if not stacks:
        console.print("no running stack (start one with `lab up`)")
        raise typer.Exit(1)
    for data in stacks:
        table = Table(title=f"{data['run_dir']} (profile {data['profile']})")
        for col in ("member", "pid", "alive", "detail"):
            table.add_column(col)
        for name, m in data["members"].items():
            w = data["workers"].get(name)
            detail = f"{w['hostname']} pool={w['pool_children']}" if w else data["urls"].get(name, "")
            table.add_row(name, str(m["pid"]), "yes" if m["alive"] else "[red]no[/]", detail)
        out.print(table)
        out.print(f"health: {(data.get('health') or {}).get('status', '-')}")


@app.command("profiles")
def profiles_cmd() -> None:
    """List the config profiles under configs/."""
    for name in list_profiles():
        out.print(f"{name:14} {profile_description(name)}", highlight=False)


# --- the uses, and the verbs that combine them ---------------------------------------------------------------
app.command("demo")(demo)
app.command("load")(load_command)
app.add_typer(chaos_app, name="chaos")
app.add_typer(bench_app, name="bench")
dashboards_app.command("check")(dashboards_check)
app.add_typer(dashboards_app, name="dashboards")
app.command("report")(report_command)
app.command("audit")(audit_command)


def main() -> None:
    """The ``lab`` console script. A usage error (an unknown option, a value out of range) is bad input like
    any other: one line naming the option and exit 2, not a boxed panel."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except typer.TyperException as exc:  # typer's (vendored) click exceptions, UsageError among them
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(f"{message}{where}")
        raise SystemExit(getattr(exc, "exit_code", EXIT_INPUT)) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
