"""pytest-celery's node API on local processes: the same tests run on a Stack here and on Docker elsewhere.

pytest-celery 1.x builds ``CeleryTestSetup`` from broker, backend and worker *nodes*, each wrapping a Docker
container, and its stock fixtures start those containers. The nodes use a small part of the container:
``ready()``, ``logs()``, ``kill(signal)``, ``restart(timeout)``, ``reload()``, ``status``, ``teardown()``,
``celeryconfig``, ``name`` and ``id``. ``LocalMember`` provides exactly that surface over a member of a lab
``Stack`` (a PID-tracked ``lab.procs.Proc``: a real redis-server, a real ``celery worker``), so the stock node
classes, clusters, ``celery_setup_config`` and ``celery_setup`` work unchanged on top of it.

The fixtures here override pytest-celery's ``celery_broker``, ``celery_backend``, ``celery_worker`` and
``celery_setup_app`` (and nothing else of its graph). Load them from a conftest::

    from tests.plugins.pytest_celery_local import *  # noqa: F403  (``__all__`` is exactly the fixtures)

(``pytest_plugins = ["tests.plugins.pytest_celery_local"]`` works too, in the rootdir's conftest only: pytest refuses
``pytest_plugins`` in deeper conftests.) Then write tests in pytest-celery's style::

    def test_round_trip(celery_setup):
        result = celery_setup.app.send_task("app.tasks.workflows.process_item", args=[7])
        assert result.get(timeout=30) == 49
        celery_setup.worker.assert_log_exists(f"{result.id}] succeeded")

With ``LAB_CELERY_NODES=docker`` the same fixtures hand out pytest-celery's own Docker nodes instead: its
Redis broker and backend containers, and a worker container built from this repository's ``Dockerfile``
running the reference app (so tasks sent by name exist there too).

Not supported: ``celery_setup.ready(ping=True)`` sends pytest-celery's own ``ping`` task, which the reference
app's workers do not have (``control=True`` pings them instead).

Topology, as in the lab and in compose.yaml: the broker (db 0) and the result backend (db 1) are two nodes
over ONE redis-server, so killing or restarting either one does it to both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal as signals
from collections.abc import Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import redis
from celery import Celery
from pytest_celery import (
    CeleryTestBackend,
    CeleryTestBroker,
    CeleryTestContainer,
    CeleryTestWorker,
    CeleryWorkerContainer,
)
from pytest_docker_tools import build, container, fxtr

from app.core.celery import create_celery_app
from app.core.config import Settings, settings_from
from lab.commands import celery_worker_argv
from lab.procs import Proc, StackError, wait_until
from lab.profiles import ROOT
from lab.stack import Stack, StackConfig, Worker

# The fixtures, for ``from tests.plugins.pytest_celery_local import *`` in a conftest.
__all__ = [
    "celery_backend",
    "celery_broker",
    "celery_lab_worker_command",
    "celery_lab_worker_container",
    "celery_lab_worker_env",
    "celery_lab_worker_image",
    "celery_local_stack",
    "celery_local_stack_config",
    "celery_setup_app",
    "celery_worker",
]

NODES_ENV = "LAB_CELERY_NODES"
READY_TIMEOUT = 60.0
# CeleryTestWorker.get_running_processes_info's default columns.
PROCESS_COLUMNS = ["pid", "name", "username", "cmdline", "cpu_percent", "memory_percent", "create_time"]


def docker_nodes() -> bool:
    """True when ``LAB_CELERY_NODES=docker`` asks for pytest-celery's Docker nodes; local processes otherwise."""
    mode = os.environ.get(NODES_ENV, "local").strip().lower()
    if mode not in ("local", "docker"):
        raise StackError(f"{NODES_ENV}={mode!r} is invalid: use 'local' (the default) or 'docker'")
    return mode == "docker"


def require_docker() -> None:
    """Docker mode was asked for explicitly: without an engine, say so (rather than a docker-py traceback)."""
    import docker  # pytest-celery's dependency; imported here so local mode never touches it

    try:
        docker.from_env().ping()
    except Exception as exc:
        raise StackError(
            f"{NODES_ENV}=docker but no Docker engine answers ({type(exc).__name__}): start Docker, or unset "
            f"{NODES_ENV} to run the nodes as local processes"
        ) from None


def parse_signal(sig: str | int | None) -> int:
    """Docker's kill takes a signal name or number; None means SIGKILL, as in Docker."""
    if sig is None:
        return int(signals.SIGKILL)
    if isinstance(sig, int):
        return sig
    name = sig.upper()
    try:
        return int(signals.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise StackError(f"unknown signal {sig!r}: use a name like 'SIGTERM' or a number") from None


class LocalMember(CeleryTestContainer):
    """One Stack member behind the container surface pytest-celery's nodes use.

    There is no Docker container behind it: everything the nodes call is answered from the member's process
    (by recorded PID) and log file; the Docker-only parts of the base class raise NotImplementedError.
    """

    def __init__(self, stack: Stack, member: str) -> None:
        # The base class's __init__ wraps a docker-py container object; there is none to wrap.
        self._container = None
        self.stack = stack
        self.member = member

    # --- identity ----------------------------------------------------------------------------------------
    @property
    def proc(self) -> Proc:
        proc = self.stack.procs.get(self.member)
        if proc is None:
            raise StackError(
                f"{self.member!r} is not a process this Stack started (an external broker?): it cannot be "
                "killed, restarted or read from here"
            )
        return proc

    @property
    def name(self) -> str:
        return self.member

    @property
    def id(self) -> str:
        # Stable across restarts, like a container id; nodes use its first 12 characters as a hostname.
        return f"{self.member}-{self.stack.run_dir.name}"

    @property
    def status(self) -> str:
        """Docker's words: "running", "paused" (SIGSTOPped, e.g. by a chaos experiment) or "exited"."""
        proc = self.proc
        if not proc.alive():
            return "exited"
        with contextlib.suppress(psutil.Error):
            if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
                return "paused"
        return "running"

    # --- what the nodes call -----------------------------------------------------------------------------
    def serving(self) -> bool:
        """The member answers on its real interface (subclasses: a Redis PING, a Celery control ping)."""
        return self.proc.alive()

    def ready(self) -> bool:
        wait_until(self.serving, timeout=READY_TIMEOUT, what=f"{self.member} to serve", abort=self.proc.died)
        return True

    def reload(self) -> None:
        """Docker refreshes cached container state here; a local member's state is always read live."""

    def logs(self) -> str:
        try:
            return self.proc.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self, signal: str | int | None = None) -> None:
        sig = parse_signal(signal)
        self.stack.signal_member(self.member, sig)
        if sig == signals.SIGKILL:
            # A SIGKILLed container takes every process in it along (its PID 1 died); so does this member:
            # the worker's pool children go with their parent, and status reads "exited" on return.
            self.proc.kill_group()
            self.proc.wait(10)

    def restart(self, timeout: float = 10) -> None:
        """Docker's restart: SIGTERM, SIGKILL after ``timeout``, start again, wait until it serves."""
        self.stack.stop_member(self.member, timeout=timeout)
        self.stack.restart_member(self.member)
        self.ready()

    def teardown(self) -> None:
        """Nothing per node: the Stack fixture stops every member, on failure too."""

    # --- Docker-only -------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        raise NotImplementedError(f"{self.member} is a local process: it has no Docker attributes")

    def exec_run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.member} is a local process: run commands on this machine instead")

    def get_files(self, path: str) -> dict[str, bytes | None]:
        raise NotImplementedError(f"{self.member} is a local process: read {path} from this machine instead")


class LocalRedis(LocalMember):
    """The Stack's redis-server, as seen by one Celery role (broker or result backend) through its db."""

    def __init__(self, stack: Stack, url: str) -> None:
        super().__init__(stack, "redis")
        self.url = url

    @property
    def host_url(self) -> str:
        return self.url

    @property
    def hostname(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    @property
    def vhost(self) -> str:
        return urlsplit(self.url).path.lstrip("/") or "0"

    @property
    def celeryconfig(self) -> dict[str, Any]:
        # The keys RedisContainer gives; "url" (what workers use) and "host_url" (what the test process uses)
        # are the same address here, since the workers run on this machine.
        return {
            "url": self.url,
            "host_url": self.url,
            "hostname": self.hostname,
            "port": self.port,
            "vhost": self.vhost,
        }

    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)

    def serving(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()


class LocalWorker(LocalMember):
    """A ``celery worker`` process of the Stack (the reference app, the profile's settings)."""

    def __init__(self, stack: Stack, worker: Worker) -> None:
        super().__init__(stack, worker.name)
        self.node_name = worker.hostname

    def serving(self) -> bool:
        replies = self.stack.celery.control.ping(destination=[self.node_name], timeout=0.5) or []
        return any(self.node_name in reply for reply in replies)

    # CeleryWorkerContainer's queries, answered from the running process instead of class defaults.
    def version(self) -> str:
        return dist_version("celery")

    def log_level(self) -> str:
        argv = self.proc.argv
        return argv[argv.index("--loglevel") + 1] if "--loglevel" in argv else "WARNING"

    def worker_name(self) -> str:
        return self.node_name.split("@", 1)[0]

    def worker_queue(self) -> str:
        return str(self.stack.celery.conf.task_default_queue)


class LocalTestWorker(CeleryTestWorker):
    """CeleryTestWorker for a local worker: the node name is the worker's real ``-n``, processes are found by PID."""

    container: LocalWorker

    def hostname(self) -> str:
        return self.container.node_name

    def get_running_processes_info(
        self, columns: list[str] | None = None, filters: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The worker's main process and its pool children (a container's whole process table, locally)."""
        columns = columns or PROCESS_COLUMNS
        rows: list[dict[str, Any]] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            main = psutil.Process(self.container.proc.pid)
            for proc in [main, *main.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rows.append(proc.as_dict(attrs=columns))
        if filters:
            rows = [row for row in rows if all(row.get(k) == v for k, v in filters.items())]
        return rows


def start_local_worker(stack: Stack, app: Celery | None = None) -> LocalTestWorker:
    """Start one more ``celery worker`` on the Stack and wrap it as a node (e.g. for a 2-worker cluster)."""
    return LocalTestWorker(LocalWorker(stack, stack.start_worker()), app or stack.celery)


def setup_app(settings: Settings, celery_setup_config: dict[str, Any]) -> Celery:
    """The reference app's client configuration (JSON only, UTC, acks_late...) on the nodes' broker/backend."""
    app = create_celery_app(settings, set_as_current=False)
    app.conf.update(celery_setup_config)
    return app


# --- fixtures: local mode ------------------------------------------------------------------------------------
@pytest.fixture
def celery_local_stack_config() -> dict[str, Any]:
    """StackConfig fields for the Stack behind the nodes; override to pick a profile, overrides, members."""
    return {}


@pytest.fixture
def celery_local_stack(celery_local_stack_config: dict[str, Any], tmp_path: Path) -> Iterator[Stack | None]:
    """The Stack the local nodes live on: redis-server, SMTP sink, AI stub, no API; workers come per node."""
    if docker_nodes():
        require_docker()
        yield None
        return
    fields = {"run_dir": tmp_path / "celery-local", "workers": 0, "api": False, **celery_local_stack_config}
    with Stack(StackConfig(**fields)) as stack:
        yield stack


@pytest.fixture
def celery_broker(request: pytest.FixtureRequest, celery_local_stack: Stack | None) -> Iterator[CeleryTestBroker]:
    """The broker node: the Stack's redis-server (db of CELERY_BROKER_URL), or pytest-celery's Redis container."""
    if celery_local_stack is None:
        yield request.getfixturevalue("celery_redis_broker")
        return
    broker = CeleryTestBroker(LocalRedis(celery_local_stack, celery_local_stack.settings.celery_broker_url))
    yield broker
    broker.teardown()


@pytest.fixture
def celery_backend(request: pytest.FixtureRequest, celery_local_stack: Stack | None) -> Iterator[CeleryTestBackend]:
    """The result backend node: the same redis-server (db of CELERY_RESULT_BACKEND), or a Redis container."""
    if celery_local_stack is None:
        yield request.getfixturevalue("celery_redis_backend")
        return
    backend = CeleryTestBackend(LocalRedis(celery_local_stack, celery_local_stack.settings.celery_result_backend))
    yield backend
    backend.teardown()


@pytest.fixture
def celery_setup_app(celery_local_stack: Stack | None, celery_setup_config: dict[str, Any]) -> Iterator[Celery]:
    """The reference app as the test's client, pointed at the broker/backend nodes' addresses."""
    if celery_local_stack is None:
        app = setup_app(settings_from(), celery_setup_config)
    else:
        s = celery_local_stack.settings
        expected = {"broker_url": s.celery_broker_url, "result_backend": s.celery_result_backend}
        for key, url in celery_setup_config.items():
            if key in expected and url != expected[key]:
                # Local workers run on the Stack's Redis: a cluster elsewhere would split test and workers.
                raise StackError(
                    f"{key} of the node clusters is {url} but the local workers use {expected[key]}: with local "
                    "nodes, override celery_local_stack_config (e.g. broker_url) rather than the node fixtures"
                )
        app = setup_app(s, celery_setup_config)
    yield app
    app.close()


@pytest.fixture
def celery_worker(
    request: pytest.FixtureRequest, celery_local_stack: Stack | None, celery_setup_app: Celery
) -> Iterator[CeleryTestWorker]:
    """One worker node: a fresh ``celery worker`` process on the Stack, or the reference app's container."""
    worker: CeleryTestWorker
    if celery_local_stack is None:
        worker = LabDockerWorker(request.getfixturevalue("celery_lab_worker_container"), celery_setup_app)
    else:
        worker = start_local_worker(celery_local_stack, celery_setup_app)
    yield worker
    worker.teardown()


# --- fixtures: Docker mode (LAB_CELERY_NODES=docker; needs a Docker engine) ---------------------------------
class LabWorkerContainer(CeleryWorkerContainer):
    """pytest-celery's worker container, running this repository's image and the reference app."""

    @classmethod
    def command(cls, *args: str, debugpy: bool = False, wait_for_client: bool = True, **kwargs: dict) -> list[str]:
        # The Stack's worker command line with the reference pool and size, plus the queue pytest-celery
        # addresses a worker node by.
        fields = Settings.model_fields
        pool, concurrency = fields["celery_worker_pool"].default, fields["celery_worker_concurrency"].default
        argv = celery_worker_argv(f"{cls.worker_name()}@%h", pool, concurrency)
        return ["python", *argv[1:], "-Q", cls.worker_queue(), *args]

    @classmethod
    def worker_name(cls) -> str:
        return "lab_worker"

    @classmethod
    def lab_env(cls, celery_worker_cluster_config: dict[str, Any]) -> dict[str, str]:
        """The app's own env names (Settings), filled from the clusters' in-network URLs."""
        broker = (celery_worker_cluster_config.get("celery_broker_cluster_config") or {}).get("urls") or []
        backend = (celery_worker_cluster_config.get("celery_backend_cluster_config") or {}).get("urls") or []
        if not broker or not backend:
            raise StackError("the lab's worker container needs both a broker and a result backend node")
        base = broker[0].rsplit("/", 1)[0]
        return {
            "CELERY_BROKER_URL": broker[0],
            "CELERY_RESULT_BACKEND": backend[0],
            "CACHE_URL": f"{base}/2",
            "DATABASE_URL": "sqlite:////tmp/app.db",
            "EXPORT_DIR": "/tmp/exports",
            "REPORT_DIR": "/tmp/reports",
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }


class LabDockerWorker(CeleryTestWorker):
    """The stock worker node, but listing processes with psutil from the image (it has no pytest-celery utils)."""

    def get_running_processes_info(
        self, columns: list[str] | None = None, filters: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        columns = columns or PROCESS_COLUMNS
        code = f"import json, psutil; print(json.dumps([p.info for p in psutil.process_iter({columns!r})]))"
        exit_code, output = self.container.exec_run(["python", "-c", code])
        if exit_code != 0:
            raise RuntimeError(f"listing the worker container's processes failed: {output!r}")
        rows: list[dict[str, Any]] = json.loads(output)
        return [row for row in rows if all(row.get(k) == v for k, v in (filters or {}).items())]


@pytest.fixture
def celery_lab_worker_env(celery_worker_cluster_config: dict[str, Any]) -> dict[str, str]:
    return LabWorkerContainer.lab_env(celery_worker_cluster_config)


@pytest.fixture
def celery_lab_worker_command() -> list[str]:
    return LabWorkerContainer.command()


celery_lab_worker_image = build(path=str(ROOT), dockerfile="Dockerfile", tag="celery-lab/app:pytest-celery")

celery_lab_worker_container = container(
    image="{celery_lab_worker_image.id}",
    environment=fxtr("celery_lab_worker_env"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=LabWorkerContainer,
    timeout=READY_TIMEOUT,
    command=fxtr("celery_lab_worker_command"),
)
