"""A RabbitMQ node of the lab's own: its own epmd, AMQP and management ports, data and log dirs, and cookie.

The Debian package's ``/usr/sbin/rabbitmq-server`` wrapper switches to the ``rabbitmq`` user and the system
node's directories; the lab instead runs ``/usr/lib/rabbitmq/bin/rabbitmq-server`` with every path and port
in environment variables, so it never touches (or depends on) a system node that may already be running on
5672. ``RUNNING_UNDER_SYSTEMD`` makes that script ``exec`` the Erlang VM instead of waiting on it from a
shell: the PID the lab tracks is then the broker itself, so SIGKILL, SIGSTOP and PDEATHSIG reach it.

The management plugin is on (its HTTP API is how chaos reads queued message ids without consuming them) with
a short statistics interval, because the lab reads queue depths seconds after a fault.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lab.procs import Proc, StackError, free_port, start_on_free_port, wait_until

SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD_CANDIDATES = ("/usr/bin/epmd", "/usr/lib/erlang/bin/epmd")
USER = PASSWORD = "guest"  # allowed from loopback only, which is all the lab listens on
STATS_INTERVAL_MS = 250


@dataclass
class RabbitNode:
    """Ports and procs of one started node."""

    epmd: Proc
    server: Proc
    amqp_port: int
    management_port: int
    epmd_port: int
    dist_port: int

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.amqp_port}//"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"


def require_rabbitmq() -> tuple[str, str]:
    """The server script and epmd, or a StackError saying which Debian package installs them."""
    epmd = next((p for p in EPMD_CANDIDATES if Path(p).exists()), None)
    if not SERVER_SCRIPT.exists() or epmd is None:
        raise StackError(
            f"RabbitMQ not found ({SERVER_SCRIPT} or epmd missing): install the Debian package 'rabbitmq-server' "
            "(apt-get install rabbitmq-server), or use --broker redis"
        )
    return str(SERVER_SCRIPT), epmd


def node_env(
    base: dict[str, str], data_dir: Path, *, amqp: int, management: int, epmd: int, dist: int
) -> dict[str, str]:
    config = data_dir / "rabbitmq.conf"
    config.write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management}\n"
        f"collect_statistics_interval = {STATS_INTERVAL_MS}\n"
        # A lab node holds test messages only: do not block publishers when the shared disk runs low.
        "disk_free_limit.absolute = 1MB\n"
    )
    (data_dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
    return {
        **base,
        "HOME": str(data_dir),  # the Erlang cookie lives here, not in /var/lib/rabbitmq
        "ERL_EPMD_PORT": str(epmd),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODENAME": f"lab{amqp}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_CONF_ENV_FILE": "/dev/null",  # the system node's rabbitmq-env.conf names its node
        "RABBITMQ_CONFIG_FILE": str(data_dir / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(data_dir / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data_dir / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(data_dir / "mnesia"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(data_dir / "plugins-expand"),
        "RABBITMQ_LOG_BASE": str(data_dir / "log"),
        "RABBITMQ_LOGS": "-",  # to stdout, i.e. the member's log file
        "RABBITMQ_PID_FILE": str(data_dir / "rabbitmq.pid"),
        "RUNNING_UNDER_SYSTEMD": "true",  # exec the VM: the tracked PID is the broker
    }


def amqp_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        return s.recv(8)[:1] == b"\x01"  # Connection.Start frame: the broker is accepting clients


def start_rabbitmq(
    data_dir: Path, log_dir: Path, base_env: dict[str, str], *, ready_timeout: float = 60.0
) -> RabbitNode:
    """Start epmd and a node; return once the AMQP listener answers and the management API is up. A port lost
    to a race (another process bound it after it was chosen) fails the node, and four others are chosen."""
    script, epmd_bin = require_rabbitmq()
    data_dir.mkdir(parents=True, exist_ok=True)

    def launch(ports: tuple[int, int, int, int]) -> RabbitNode:
        epmd_port, amqp, management, dist = ports
        env = node_env(base_env, data_dir, amqp=amqp, management=management, epmd=epmd_port, dist=dist)
        # Our own epmd in the foreground (not the daemon the VM would spawn), so it is tracked and stopped too.
        epmd = Proc("epmd", [epmd_bin, "-port", str(epmd_port), "-address", "127.0.0.1"], env, log_dir / "epmd.log")
        epmd.start()
        server = Proc("rabbitmq", [script], env, log_dir / "rabbitmq.log").start()
        node = RabbitNode(epmd, server, amqp, management, epmd_port, dist)

        def died() -> str | None:
            return epmd.died() or server.died()

        try:
            wait_until(lambda: amqp_ready(amqp), timeout=ready_timeout, what="rabbitmq-server", abort=died)
            wait_until(
                lambda: management_get(node, "/api/overview") is not None,
                timeout=ready_timeout,
                what="RabbitMQ's management API",
                abort=died,
            )
        except BaseException:
            server.stop(timeout=10)
            epmd.stop(timeout=2)
            raise
        return node

    node, _ports = start_on_free_port(
        "rabbitmq-server", launch, lambda: (free_port(), free_port(), free_port(), free_port())
    )
    return node


def management_get(node: RabbitNode, path: str) -> Any:
    resp = httpx.get(node.management_url + path, auth=(USER, PASSWORD), timeout=5)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return resp.json()
