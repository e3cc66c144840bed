"""Locust event hooks: the lab's command-line options, scenario weights, the task ledger and the Prometheus
exporter. Imported by the locustfile, so it runs in every Locust process (master, workers, or the only one).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gevent.pywsgi import WSGIServer
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, Runner, WorkerRunner
from prometheus_client import CollectorRegistry, make_wsgi_app

from loadtests.common.config import Scenario, from_option
from loadtests.common.ledger import Ledger
from loadtests.common.metrics import MetricStore, StoreCollector

log = logging.getLogger("lab.load")
STORE = MetricStore()
LEDGER = Ledger()
_scenarios: dict[str, Scenario] = {}
_server: list[WSGIServer] = []


def scenario(environment: Environment) -> Scenario:
    """The run's scenario. On a worker it is known once the master forwards ``--lab-scenario`` (at spawn)."""
    raw = getattr(environment.parsed_options, "lab_scenario", None) or "smoke"
    if raw not in _scenarios:
        _scenarios[raw] = from_option(raw)
    return _scenarios[raw]


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_: Any) -> None:
    parser.add_argument(
        "--lab-scenario",
        env_var="LAB_LOAD_SCENARIO",
        default="smoke",
        help="Scenario name from loadtests/scenarios.toml, or a resolved scenario as JSON (what `lab load` passes)",
    )
    parser.add_argument(
        "--lab-ledger", env_var="LAB_LOAD_LEDGER", default="", help="File the master appends dispatched task ids to"
    )
    parser.add_argument(
        "--lab-prometheus-port",
        type=int,
        env_var="LAB_LOAD_PROMETHEUS_PORT",
        default=0,
        help="Serve Prometheus metrics on this port from the master (0: off)",
    )
    parser.add_argument(
        "--lab-prometheus-bind",
        env_var="LAB_LOAD_PROMETHEUS_BIND",
        default="127.0.0.1",
        help="Address the Prometheus exporter binds to",
    )


@events.request.add_listener
def _on_request(
    request_type: str, name: str, response_time: float | None, exception: BaseException | None = None, **_: Any
) -> None:
    STORE.observe(request_type, name, response_time, exception is not None)


def _ship(client_id: str, data: dict[str, Any]) -> None:
    data["lab"] = {"metrics": STORE.snapshot(), "task_ids": LEDGER.drain()}


def _merge(client_id: str, data: dict[str, Any]) -> None:
    lab = data.get("lab") or {}
    STORE.merge(lab.get("metrics") or {})
    LEDGER.write(lab.get("task_ids") or [])


def _serve_metrics(runner: Runner, bind: str, port: int) -> None:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(STORE, lambda: runner.user_count))
    server = WSGIServer((bind, port), make_wsgi_app(registry), log=None, error_log=None)
    try:
        server.start()
    except OSError as exc:
        # Locust logs an init listener's exception and runs on without metrics; exiting instead lets the lab
        # see the lost port race in the log ("Address already in use") and start again on other ports.
        log.error("Prometheus metrics port %s:%d: %s", bind, port, exc)
        raise SystemExit(3) from exc
    _server.append(server)
    log.info("Prometheus metrics on http://%s:%d/metrics", bind, port)


@events.init.add_listener
def _init(environment: Environment, runner: Runner, **_: Any) -> None:
    if isinstance(runner, WorkerRunner):
        events.report_to_master.add_listener(_ship)
        return
    # Master or the only process: the scenario's weights decide which users run and how many of each.
    sc = scenario(environment)
    for cls in list(environment.user_classes):
        weight = sc.weights.get(cls.__name__, 0)
        if weight > 0:
            cls.weight = weight
        else:
            environment.user_classes.remove(cls)
    opts = environment.parsed_options
    if opts.lab_ledger:
        LEDGER.path = Path(opts.lab_ledger)
    if isinstance(runner, MasterRunner):
        events.worker_report.add_listener(_merge)
    if opts.lab_prometheus_port:
        _serve_metrics(runner, opts.lab_prometheus_bind, opts.lab_prometheus_port)


@events.quitting.add_listener
def _quitting(**_: Any) -> None:
    LEDGER.close()
