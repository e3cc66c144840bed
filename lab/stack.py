"""The local Stack: the reference system as real processes, started, watched, killed and stopped by PID.

Members: redis-server (free port, own data dir; broker, result backend and cache) and, with
``broker="rabbitmq"``, a RabbitMQ node of its own as the broker (lab/rabbitmq.py); the SMTP sink, the AI
stub, the API (uvicorn), N ``celery worker`` processes, and on request beat and Flower. Load, chaos and
bench act through this class: it exposes URLs, worker main PIDs and their pool children, and can signal,
stop and restart any member.

    with Stack(StackConfig(run_dir=Path("results/x"), workers=2)) as stack:
        stack.urls["api"], stack.worker_pids(), stack.kill_worker("w1", signal.SIGKILL)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from celery import Celery

from app.core.celery import create_celery_app
from app.core.config import Settings
from lab.ai_stub import AiStubClient
from lab.apps import AppTarget, pin_urls
from lab.brokerview import BROKERS, BrokerView, RabbitBrokerView, RedisBrokerView
from lab.commands import (
    ai_stub_argv,
    api_argv,
    beat_argv,
    celery_worker_argv,
    exporter_argv,
    flower_argv,
    init_db_argv,
    netproxy_argv,
    smtp_sink_argv,
)
from lab.errors import StackError
from lab.netproxy import NetProxyClient
from lab.probes import TIMELINE_ENV
from lab.procs import Proc, free_port, port_is_free, start_on_free_port, start_redis_server, stop_all, wait_until
from lab.profiles import ROOT, resolve, warn_env_typos
from lab.prometheus import LOCAL_SCRAPE_INTERVAL, PromClient, Prometheus, new_series_hold
from lab.rabbitmq import PASSWORD, STATS_INTERVAL_MS, USER, amqp_ready, start_rabbitmq
from lab.smtp_sink import SinkClient

# Every harness task (chaos ledger probe, metrics-check work, bench workloads): ``StackConfig(probes=True)``.
PROBE_MODULE = "lab.probes"

READY_TIMEOUT = 60.0


@dataclass
class StackConfig:
    run_dir: Path
    profile: str = "reference"
    workers: int = 1
    # Extra env vars (Settings names) that beat the profile and the caller's environment.
    overrides: dict[str, str] = field(default_factory=dict)
    environ: Mapping[str, str] | None = None  # default: os.environ
    api: bool = True
    api_port: int | None = None
    smtp: bool = True
    ai_stub: bool = True
    ai_latency: str = "fixed:0.01"
    ai_error_rate: float = 0.0
    beat: bool = False
    flower: bool = False
    redis_aof: bool = False
    # "redis" (the default) or "rabbitmq": which server is the Celery broker. Redis always runs: it is the
    # result backend and the cache either way.
    broker: str = "redis"
    # Use this Redis instead of starting one (e.g. the CELERY_BROKER_URL a user already runs).
    broker_url: str | None = None
    # Use this result backend (any URL Celery takes) instead of the broker Redis's db 1 / the lab's own.
    result_backend: str | None = None
    ready_timeout: float = READY_TIMEOUT
    # Env vars outside Settings for every member (e.g. a chaos ledger's URL for probe tasks).
    extra_env: dict[str, str] = field(default_factory=dict)
    # Load the lab's harness tasks (lab/probes.py) into the workers: chaos, the metrics check and the bench.
    probes: bool = False
    # Extra task modules the workers import (``celery worker --include``).
    extra_task_modules: list[str] = field(default_factory=list)
    # The events exporter (lab/exporter.py), started before the workers so it sees every event.
    exporter: bool = False
    # Prometheus (Debian package) scraping the exporter, the API and Flower; implies exporter.
    prometheus: bool = False
    # Rule files the Stack's Prometheus evaluates; None: the dashboards' rules (lab/prometheus.DEFAULT_RULES_DIR).
    prometheus_rules: list[Path] | None = None
    # Workers reach Redis through lab/netproxy.py, which chaos can partition, slow down or reset.
    net_proxy: bool = False
    # The result backend on a redis-server of its own (member "redis-backend"), outside the broker's fault
    # domain: a broker crash without persistence then leaves the results, an independent witness, intact.
    separate_backend: bool = False
    # Which Celery app the workers (and beat, Flower) run: the reference app, or a user's (lab/apps.py). A user's
    # app gets no API, SMTP sink, AI stub or database: those members belong to the reference system.
    app: AppTarget = field(default_factory=AppTarget)


@dataclass
class Worker:
    name: str  # short name, e.g. "w1"
    hostname: str  # Celery node name, e.g. "w1@lab-1234"
    proc: Proc


def _ping(url: str, what: str, option: str) -> None:
    """StackError, one line, unless the Redis at ``url`` answers (an external server, before anything starts)."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise StackError(f"{what} at {url} is not reachable ({exc}); start it or drop {option}") from None
    finally:
        client.close()


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir.resolve()
        self.procs: dict[str, Proc] = {}
        self.workers: dict[str, Worker] = {}
        self.urls: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self._worker_seq = 0
        # Random, so two Stacks on one external broker never answer each other's pings.
        self._tag = f"lab-{secrets.token_hex(6)}"
        self._client: Celery | None = None
        self.prometheus: Prometheus | None = None
        # Seconds from start() to each milestone (state "startup"; docs/benchmarks.md, time to first data).
        self.startup: dict[str, float] = {}
        self._starter: ThreadPoolExecutor | None = None
        self._began = time.monotonic()
        self.settings: Settings = self._resolve_settings(redis_url=config.broker_url or "redis://127.0.0.1:1")

    # --- configuration -----------------------------------------------------------------------------------
    def _resolve_settings(self, redis_url: str) -> Settings:
        base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") >= 3 else redis_url
        data = self.run_dir / "data"
        forced = {
            "CELERY_BROKER_URL": f"{base}/0",
            "CELERY_RESULT_BACKEND": f"{base}/1",
            "CACHE_URL": f"{base}/2",
            "DATABASE_URL": f"sqlite:///{data / 'app.db'}",
            "EXPORT_DIR": str(data / "exports"),
            "REPORT_DIR": str(data / "reports"),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.ports.get("smtp", 1025)),
            "AI_BASE_URL": self.urls.get("ai", "http://127.0.0.1:1"),
            "LOG_FORMAT": "json",
            **self.config.overrides,
        }
        if "redis-backend" in self.urls:
            forced["CELERY_RESULT_BACKEND"] = f"{self.urls['redis-backend']}/0"
        if self.config.result_backend:
            forced["CELERY_RESULT_BACKEND"] = self.config.result_backend
        if self.config.broker_url:
            forced["CELERY_BROKER_URL"] = self.config.broker_url
        elif "rabbitmq" in self.urls:
            forced["CELERY_BROKER_URL"] = self.urls["rabbitmq"]
        environ = os.environ if self.config.environ is None else self.config.environ
        warn_env_typos(environ)
        return resolve(self.config.profile, environ, forced)

    @property
    def env(self) -> dict[str, str]:
        """The environment every member runs with: the caller's, plus every setting spelled out. A user's app
        reads its own settings; it gets only the two URLs Celery itself reads before them."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PYTHONSTARTUP"))}
        target = self.config.app
        if target.reference:
            env.update(self.settings.as_env())
        else:
            env["CELERY_BROKER_URL"] = self.settings.celery_broker_url
            env["CELERY_RESULT_BACKEND"] = self.settings.celery_result_backend
            env[TIMELINE_ENV] = self.settings.cache_url  # where lab.probes writes its tasks' timelines
            env.update(target.env())
        env.update(self.config.extra_env)
        paths = [str(target.path)] if target.path else []
        env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), env.get("PYTHONPATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # --- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def broker(self) -> str:
        """Which server is the broker: "redis" or "rabbitmq" (also the member name chaos faults act on)."""
        return self.config.broker

    def start(self) -> Stack:
        if self.config.broker not in BROKERS:
            raise StackError(f"unknown broker {self.config.broker!r}: choose one of {', '.join(BROKERS)}")
        if self.config.net_proxy and (self.config.broker != "redis" or self.config.broker_url):
            raise StackError("the network proxy sits between the workers and the lab's own Redis: drop --broker")
        if self.config.broker_url and self.config.broker != "redis":
            raise StackError("an external --broker-url is a Redis URL; it cannot be combined with --broker rabbitmq")
        if not self.config.app.reference and (self.config.api or self.config.smtp or self.config.ai_stub):
            raise StackError(
                f"the API, SMTP sink and AI stub belong to the reference app; {self.config.app.spec} runs without them"
            )
        port = self.config.api_port
        if port is not None and not port_is_free(port):
            raise StackError(
                f"port {port} on 127.0.0.1 is already in use: stop what uses it or choose another with --api-port"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self._check_external_servers()  # before anything starts
        self._began = time.monotonic()
        try:
            # Members that need nothing from each other start together (each waits on its own readiness),
            # Prometheus among the first so that it is up before there is anything to scrape.
            self._together(
                None if self.config.broker_url else lambda: self._start_redis(),
                (lambda: self._start_redis("redis-backend")) if self.config.separate_backend else None,
                self._start_rabbitmq if self.config.broker == "rabbitmq" else None,
                self._start_smtp if self.config.smtp else None,
                self._start_ai_stub if self.config.ai_stub else None,
                self._start_prometheus if self.config.prometheus else None,
            )
            redis_url = self.config.broker_url or f"{self.urls['redis']}/0"
            if self.config.broker_url:
                self.urls["redis"] = redis_url
            self.settings = self._resolve_settings(redis_url)
            if self.config.net_proxy:
                self._start_netproxy()
            self._together(
                self._init_db if self.config.app.reference else None,
                self._start_exporter if self.config.exporter or self.config.prometheus else None,
                self._start_flower if self.config.flower else None,  # a consumer of events, like the exporter
            )
            # After the exporter, so that it sees every event of theirs; the API after the schema exists.
            for _ in range(self.config.workers):
                self.start_worker(wait=False)
            self._together(
                self._start_api if self.config.api else None,
                self._start_beat if self.config.beat else None,
            )
            self.mark("members_s")
            for w in self.workers.values():
                self._wait_worker(w)
            self.mark("workers_s")
            if self.prometheus is not None:
                self._scrape_members()
                self.mark("first_scrape_s")
            self.write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def mark(self, milestone: str) -> float:
        """Record a startup milestone: seconds since start() began (state "startup")."""
        self.startup[milestone] = round(time.monotonic() - self._began, 2)
        return self.startup[milestone]

    def note_first_data(self) -> bool:
        """Record when a dashboard's throughput panel, ``sum(rate(celery_task_succeeded_total[1m]))``, first
        has a series (first_rate_s) and first reads above 0 (first_success_s); True once both are seen."""
        if "first_success_s" in self.startup:
            return True
        if self.prometheus is None:
            return False
        prom = PromClient(self.prometheus.url)
        try:
            rate = prom.scalar("sum(rate(celery_task_succeeded_total[1m]))")
        except (httpx.HTTPError, ValueError):
            return False
        finally:
            prom.close()
        if rate is not None and "first_rate_s" not in self.startup:
            self.mark("first_rate_s")
        if rate:
            self.mark("first_success_s")
        return bool(rate)

    def _together(self, *starts: Callable[[], object] | None) -> None:
        """Run these member starts at once and wait for all of them; then raise the first failure. Waiting
        for every one, also when one fails or Ctrl-C arrives, is what lets stop() find each process that was
        started: a thread still starting one would leave it behind."""
        calls = [c for c in starts if c is not None]
        if len(calls) <= 1:
            for call in calls:
                call()
            return
        if self._starter is None:
            # Its threads live until stop(): a member's PDEATHSIG (lab/procs.py) fires when the *thread* that
            # spawned it exits, so a pool whose threads ended after the start would kill the members.
            self._starter = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stack-start")
        futures = [self._starter.submit(call) for call in calls]
        interrupted: BaseException | None = None
        while True:
            try:
                wait(futures)
                break
            except BaseException as exc:  # Ctrl-C or SIGTERM while members start: finish waiting first
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        for future in futures:
            if (error := future.exception()) is not None:
                raise error

    def stop(self) -> None:
        """Stop everything in dependency order; also safe to call twice, or after a partial start."""
        # Producers and watchers first, then workers (warm shutdown, together), then what they depend on.
        workers = set(self.workers)
        last = {"smtp", "ai", "redis", "redis-backend", "rabbitmq", "epmd", "netproxy"}
        first = [p for n, p in self.procs.items() if n not in workers | last]
        stop_all(first, timeout=5)
        stop_all([p for n, p in self.procs.items() if n in workers], timeout=15)
        stop_all([p for n, p in self.procs.items() if n in last], timeout=5)
        if self._starter is not None:  # only now: its threads are the parents of members it started
            self._starter.shutdown(wait=False)
            self._starter = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        state = self.run_dir / "stack.json"
        with contextlib.suppress(FileNotFoundError):
            state.unlink()

    # --- members -----------------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a member process (logged to logs/NAME.log, stopped with the Stack)."""
        proc = Proc(name, argv, env or self.env, self.run_dir / "logs" / f"{name}.log", cwd=ROOT)
        self.procs[name] = proc.start()
        return proc

    def _start_redis(self, name: str = "redis") -> str:
        proc, port = start_redis_server(
            name,
            self.run_dir / name,
            self.run_dir / "logs" / f"{name}.log",
            aof=self.config.redis_aof and name == "redis",  # the backend's own server is never the one faulted
            ready_timeout=self.config.ready_timeout,
        )
        self.procs[name] = proc
        self.ports[name] = port
        self.urls[name] = f"redis://127.0.0.1:{port}"
        return f"redis://127.0.0.1:{port}/0"

    def _start_rabbitmq(self) -> None:
        node = start_rabbitmq(
            self.run_dir / "rabbitmq", self.run_dir / "logs", dict(os.environ), ready_timeout=self.config.ready_timeout
        )
        self.procs["epmd"], self.procs["rabbitmq"] = node.epmd, node.server
        self.ports["rabbitmq"] = node.amqp_port
        self.urls["rabbitmq"] = node.url
        self.urls["rabbitmq_management"] = node.management_url

    def _start_netproxy(self) -> None:
        upstream = f"127.0.0.1:{self.ports['redis']}"
        port, control = self.http_member(
            "netproxy",
            lambda ps: netproxy_argv("127.0.0.1", ps[0], upstream, ps[1]),
            lambda ps: f"http://127.0.0.1:{ps[1]}/health",
            ports=2,
        )
        self.ports["netproxy"] = port
        self.urls["netproxy_control"] = f"http://127.0.0.1:{control}"

    def net(self, action: str, **body: Any) -> dict[str, Any]:
        """Drive the network proxy: ``partition`` (on=bool), ``latency`` (ms=N), ``reset``, ``state``."""
        if "netproxy_control" not in self.urls:
            raise StackError("this Stack has no network proxy (StackConfig(net_proxy=True))")
        return NetProxyClient(self.urls["netproxy_control"]).call(action, **body)

    @property
    def worker_env(self) -> dict[str, str]:
        """The workers' environment: with the network proxy, every Redis URL on the lab's Redis goes through it."""
        env = self.env
        if "netproxy" in self.ports:
            direct, proxied = f"127.0.0.1:{self.ports['redis']}", f"127.0.0.1:{self.ports['netproxy']}"
            for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL"):
                if name in env:
                    env[name] = env[name].replace(direct, proxied)
        return env

    def _check_external_servers(self) -> None:
        """A user's own broker or Redis result backend must answer before the Stack starts its own members."""
        if self.config.broker_url:
            _ping(self.config.broker_url, "the broker", "--broker-url")
        backend = self.config.result_backend
        if backend and backend.startswith(("redis://", "rediss://", "unix://")):
            _ping(backend, "the result backend", "--result-backend")

    def http_ready(self, name: str, url: str) -> None:
        proc = self.procs[name]
        wait_until(
            lambda: httpx.get(url, timeout=1).status_code < 500,
            timeout=self.config.ready_timeout,
            what=f"{name} at {url}",
            abort=proc.died,
        )

    def http_member(
        self,
        name: str,
        argv: Callable[[tuple[int, ...]], list[str]],
        ready_url: Callable[[tuple[int, ...]], str],
        *,
        ports: int = 1,
        env: dict[str, str] | None = None,
        fixed: tuple[int, ...] | None = None,
    ) -> tuple[int, ...]:
        """Start a member serving HTTP on ``ports`` free ports (or the ``fixed`` ones), ready once its
        ``ready_url`` answers; another pick of ports when a port is taken between choosing and binding."""

        def launch(chosen: tuple[int, ...]) -> Proc:
            proc = self.spawn(name, argv(chosen), env)
            try:
                self.http_ready(name, ready_url(chosen))
            except BaseException:
                proc.stop(timeout=2)
                raise
            return proc

        def pick() -> tuple[int, ...]:
            return fixed or tuple(free_port() for _ in range(ports))

        _proc, chosen = start_on_free_port(name, launch, pick, attempts=1 if fixed else 3)
        return chosen

    def _start_smtp(self) -> None:
        data = self.run_dir / "smtp"
        smtp, http = self.http_member(
            "smtp",
            lambda ps: smtp_sink_argv("127.0.0.1", ps[0], ps[1], data),
            lambda ps: f"http://127.0.0.1:{ps[1]}/health",
            ports=2,
        )
        self.ports["smtp"] = smtp
        self.urls["smtp_control"] = f"http://127.0.0.1:{http}"

    def _start_ai_stub(self) -> None:
        cfg = self.config
        (port,) = self.http_member(
            "ai",
            lambda ps: ai_stub_argv("127.0.0.1", ps[0], cfg.ai_latency, cfg.ai_error_rate),
            lambda ps: f"http://127.0.0.1:{ps[0]}/health",
        )
        self.urls["ai"] = f"http://127.0.0.1:{port}"

    def _init_db(self) -> None:
        # Create the schema once, before several processes race to.
        proc = Proc(
            "init-db",
            init_db_argv(),
            self.env,
            self.run_dir / "logs" / "init-db.log",
            cwd=ROOT,
        ).start()
        if not proc.wait(60) or proc.returncode != 0:
            raise StackError(f"creating the database failed:\n{proc.log_tail()}")

    def _start_api(self) -> None:
        fixed = (self.config.api_port,) if self.config.api_port else None  # a chosen port was checked in start()
        (port,) = self.http_member(
            "api", lambda ps: api_argv("127.0.0.1", ps[0]), lambda ps: f"http://127.0.0.1:{ps[0]}/openapi.json",
            fixed=fixed,
        )  # fmt: skip
        self.ports["api"] = port
        self.urls["api"] = f"http://127.0.0.1:{port}"
        self._offer_target("api", "api")

    @property
    def task_modules(self) -> list[str]:
        """What the workers ``--include`` beyond the app's own tasks."""
        return ([PROBE_MODULE] if self.config.probes else []) + list(self.config.extra_task_modules)

    def worker_argv(self, hostname: str) -> list[str]:
        """The reference app's pool and concurrency come from its Settings; a user's app from its own
        configuration (and profile), as ``celery worker`` reads it when no option is given."""
        target, s = self.config.app, self.settings
        if target.reference:
            return celery_worker_argv(hostname, s.celery_worker_pool, s.celery_worker_concurrency, self.task_modules)
        return celery_worker_argv(hostname, None, None, self.task_modules, app=target.worker_app)

    def start_worker(self, *, wait: bool = True) -> Worker:
        """Start one more worker (also the way to replace a killed one: a new name, a fresh process)."""
        self._worker_seq += 1
        name = f"w{self._worker_seq}"
        hostname = f"{name}@{self._tag}"
        worker = Worker(name, hostname, self.spawn(name, self.worker_argv(hostname), self.worker_env))
        self.workers[name] = worker
        if wait:
            self._wait_worker(worker)
            self.write_state()
        return worker

    def _wait_worker(self, worker: Worker) -> None:
        def answered() -> bool:
            replies = self.celery.control.ping(destination=[worker.hostname], timeout=0.5) or []
            return any(worker.hostname in r for r in replies)

        wait_until(
            answered,
            timeout=self.config.ready_timeout,
            what=f"worker {worker.hostname}",
            abort=worker.proc.died,
            interval=0.2,
        )

    def _start_beat(self) -> None:
        schedule = self.run_dir / "beat" / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        proc = self.spawn("beat", beat_argv(schedule, app=self.config.app.worker_app))
        wait_until(
            lambda: any(schedule.parent.iterdir()),
            timeout=self.config.ready_timeout,
            what="celery beat",
            abort=proc.died,
        )

    def _start_flower(self) -> None:
        db = self.run_dir / "flower.db"
        # Flower 2 answers its REST API with 401 unless this is set or a login is configured; the local
        # stack has no logins and listens on loopback only (README, security notes). Compose uses basic auth.
        env = {**self.env, "FLOWER_UNAUTHENTICATED_API": "true"}
        (port,) = self.http_member(
            "flower",
            lambda ps: flower_argv("127.0.0.1", ps[0], db, app=self.config.app.worker_app),
            lambda ps: f"http://127.0.0.1:{ps[0]}/healthcheck",
            env=env,
        )
        self.urls["flower"] = f"http://127.0.0.1:{port}"
        self._offer_target("flower", "flower")

    def _start_exporter(self) -> None:
        broker = self.settings.celery_broker_url
        # Held at 0 only for a Prometheus to see: a reader of /metrics alone wants counts at once.
        hold = new_series_hold(LOCAL_SCRAPE_INTERVAL) if self.config.prometheus else None
        (port,) = self.http_member(
            "exporter",
            lambda ps: exporter_argv("127.0.0.1", ps[0], broker, hold),
            lambda ps: f"http://127.0.0.1:{ps[0]}/metrics",
        )
        self.ports["exporter"] = port
        self.urls["exporter"] = url = f"http://127.0.0.1:{port}"
        # Ready means its own event came back through the broker: events published from now on are seen.
        wait_until(
            lambda: "celery_exporter_ready 1.0" in httpx.get(f"{url}/metrics", timeout=1).text,
            timeout=self.config.ready_timeout,
            what=f"the events exporter at {url}/metrics",
            abort=self.procs["exporter"].died,
            interval=0.2,
        )
        self._offer_target("celery", "exporter")

    def _start_prometheus(self) -> None:
        """Prometheus with no targets yet: each member is offered to it once up (_offer_target)."""
        prom = Prometheus(self.run_dir / "prometheus", self.config.prometheus_rules)
        self.procs["prometheus"] = prom.start(self.run_dir / "logs" / "prometheus.log", self.config.ready_timeout)
        self.prometheus = prom
        self.ports["prometheus"] = prom.port
        self.urls["prometheus"] = prom.url

    # The job each member is scraped as, when the Stack runs Prometheus.
    SCRAPED = {"celery": "exporter", "api": "api", "flower": "flower"}

    def _offer_target(self, job: str, member: str) -> None:
        """Have Prometheus scrape a member as soon as it is up: its service discovery passes new targets on
        every 5 s only, so a target given at the end would cost up to 5 s more before the first scrape."""
        if self.prometheus is not None:
            self.prometheus.set_target(job, self.urls[member])

    def _scrape_members(self) -> None:
        """Wait until Prometheus has scraped every member once: a dashboard opened when the stack says ready
        has data."""
        assert self.prometheus is not None
        jobs = {job for job, member in self.SCRAPED.items() if member in self.urls}
        wait_until(
            lambda: self.prometheus is not None and self.prometheus.scraped(jobs),
            timeout=self.config.ready_timeout,
            what=f"Prometheus' first scrape of {', '.join(sorted(jobs))}",
            abort=self.procs["prometheus"].died,
            interval=0.1,
        )

    def scrape(self, job: str, url: str) -> None:
        """Have the Stack's Prometheus scrape one more endpoint from now on (e.g. job "locust")."""
        if self.prometheus is None:
            raise StackError("this Stack runs no Prometheus (StackConfig(prometheus=True))")
        self.prometheus.set_target(job, url)

    # --- what chaos, load and bench use ------------------------------------------------------------------
    @property
    def celery(self) -> Celery:
        """A Celery client bound to this Stack's broker and backend (send tasks by name)."""
        if self._client is None:
            s, target = self.settings, self.config.app
            if target.reference:
                self._client = pin_urls(
                    create_celery_app(s, set_as_current=False), s.celery_broker_url, s.celery_result_backend
                )
            else:
                self._client = target.client(s.celery_broker_url, s.celery_result_backend)
        return self._client

    def app_settings(self) -> dict[str, Any]:
        """The Celery settings the workers run with, as a journal reports them (the reference app's from its
        Settings; a user's from its own configuration and profile)."""
        if not self.config.app.reference:
            return self.config.app.settings(self.celery.conf)
        s = self.settings
        return {
            "pool": s.celery_worker_pool,
            "concurrency": s.celery_worker_concurrency,
            "acks_late": s.celery_task_acks_late,
            "reject_on_worker_lost": s.celery_task_reject_on_worker_lost,
            "prefetch_multiplier": s.celery_worker_prefetch_multiplier,
            "visibility_timeout_s": s.celery_visibility_timeout,
            "ignore_result": s.celery_task_ignore_result,
            "task_events": s.celery_worker_send_task_events,
        }

    def redis(self, db: int = 0) -> redis.Redis:
        """The Stack's redis-server, directly (never through the network proxy): db 0 the broker (with broker
        "redis"), db 1 the result backend (unless ``separate_backend`` put it on a server of its own, see
        ``backend_redis``), db 2 the cache."""
        base = self.settings.cache_url.rsplit("/", 1)[0]
        return redis.Redis.from_url(f"{base}/{db}", socket_timeout=5, socket_connect_timeout=5)

    def backend_redis(self) -> redis.Redis:
        """The result backend's Redis, wherever it runs (db 1 of ``redis``, or the ``redis-backend`` member)."""
        return redis.Redis.from_url(self.settings.celery_result_backend, socket_timeout=5, socket_connect_timeout=5)

    def worker_pids(self) -> dict[str, int]:
        return {name: w.proc.pid for name, w in self.workers.items() if w.proc.alive()}

    def pool_children(self, name: str) -> list[int]:
        worker = self.workers[name]
        try:
            return sorted(c.pid for c in psutil.Process(worker.proc.pid).children())
        except psutil.NoSuchProcess:
            return []

    def signal_member(self, name: str, sig: int) -> None:
        proc = self.procs.get(name)
        if proc is None:
            raise StackError(f"no member {name!r}; members: {', '.join(self.procs)}")
        proc.send(sig)

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.workers[name].proc.pid
        self.signal_member(name, sig)
        return pid

    def stop_member(self, name: str, timeout: float = 15.0) -> None:
        self.procs[name].stop(timeout=timeout)

    def restart_member(self, name: str) -> Proc:
        """Start a stopped or killed member again with the same command line (same ports)."""
        old = self.procs[name]
        old.stop(timeout=5)
        proc = self.spawn(name, old.argv, old.env)
        if name == "redis":
            client = self.redis()
            wait_until(client.ping, timeout=self.config.ready_timeout, what="redis-server", abort=proc.died)
            client.close()
        elif name == "rabbitmq":
            port = self.ports["rabbitmq"]
            wait_until(lambda: amqp_ready(port), timeout=self.config.ready_timeout, what="rabbitmq", abort=proc.died)
        elif name in self.workers:
            self.workers[name].proc = proc
            self._wait_worker(self.workers[name])
        self.write_state()
        return proc

    @property
    def sink(self) -> SinkClient:
        if "smtp_control" not in self.urls:
            raise StackError("this Stack has no SMTP sink (StackConfig(smtp=True))")
        return SinkClient(self.urls["smtp_control"])

    def sink_messages(self, to: str | None = None) -> list[dict[str, Any]]:
        return self.sink.messages(to)

    def sink_refuse(self, count: int) -> None:
        self.sink.refuse(count)

    def ai_control(self, **knobs: Any) -> dict[str, Any]:
        return AiStubClient(self.urls["ai"]).control(**knobs)

    @property
    def queue(self) -> str:
        """The app's default queue (``task_default_queue``): what the workers consume and chaos counts."""
        return str(self.celery.conf.task_default_queue)

    def broker_view(self, queue: str | None = None) -> BrokerView:
        """What the broker holds on ``queue`` (default: the app's), read the same way on Redis and on RabbitMQ
        (lab/brokerview.py)."""
        queue = queue or self.queue
        if self.broker == "rabbitmq":
            return RabbitBrokerView(
                self.urls["rabbitmq_management"],
                (USER, PASSWORD),
                queue,
                held_by=self.held_by_workers,
                stats_interval_s=STATS_INTERVAL_MS / 1000,
            )
        return RedisBrokerView(lambda: self.redis(0), queue, self.app_settings()["visibility_timeout_s"])

    def held_by_workers(self) -> set[str]:
        """Ids the live workers hold (reserved or running), asked over a fresh connection: a pooled one may
        predate a broker restart."""
        held: set[str] = set()
        with self.celery.connection_for_write() as conn:
            inspect = self.celery.control.inspect(timeout=1.0, connection=conn)
            for replies in (inspect.reserved() or {}, inspect.active() or {}):
                for requests in replies.values():
                    held.update(str(r["id"]) for r in requests if r.get("id"))
        return held

    def describe(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "profile": self.config.profile,
            "app": self.config.app.describe(),
            "broker": self.config.broker,
            "lab_pid": os.getpid(),
            "urls": self.urls,
            "members": {
                name: {"pid": p.pid, "alive": p.alive(), "log": str(p.log_path)} for name, p in self.procs.items()
            },
            "workers": {
                name: {
                    "hostname": w.hostname,
                    "pid": w.proc.pid,
                    "alive": w.proc.alive(),
                    "pool_children": self.pool_children(name),
                }
                for name, w in self.workers.items()
            },
            "broker_url": self.settings.celery_broker_url,
            "startup": self.startup,
        }

    def write_state(self) -> None:
        (self.run_dir / "stack.json").write_text(json.dumps(self.describe(), indent=2))
