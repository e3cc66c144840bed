"""Faults and rollbacks, each acting on a running Stack. Every fault returns what it did and when.

Faults fire on observed progress (``wait_for_trigger``: after K completions read from the ledger), never
after a sleep, so a slow machine shifts when they fire, not whether tasks are in flight when they do.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from lab.brokerview import RedisBrokerView
from lab.errors import StackError
from lab.ledger import Ledger
from lab.probes import send_probe
from lab.procs import wait_until
from lab.stack import Stack

SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGQUIT": signal.SIGQUIT}
TRIGGER_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 60.0


@dataclass
class FaultRecord:
    kind: str
    target: str
    at: float  # epoch seconds when the fault struck
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class FaultContext:
    stack: Stack
    ledger: Ledger
    workers: int  # how many workers the experiment runs with (what rollbacks restore)
    log: Callable[[str], None] = lambda _msg: None


def wait_for_trigger(ctx: FaultContext, trigger: dict[str, Any]) -> dict[str, Any]:
    """Block until the trigger holds; on a stalled run fire anyway after a deadline and say so."""
    k = int(trigger.get("after_completions", 0))
    timeout = float(trigger.get("timeout_s", TRIGGER_TIMEOUT_S))
    try:
        wait_until(lambda: ctx.ledger.completions() >= k, timeout=timeout, what=f"{k} completions", interval=0.02)
        return {"after_completions": k, "reached": True, "completions": ctx.ledger.completions()}
    except StackError:
        return {"after_completions": k, "reached": False, "completions": ctx.ledger.completions()}


def alive_workers(stack: Stack) -> list[str]:
    return [name for name, w in stack.workers.items() if w.proc.alive()]


def _busiest_worker(ctx: FaultContext) -> str:
    alive = alive_workers(ctx.stack)
    if not alive:
        raise StackError("no live worker to inject a fault into")
    by_host = {ctx.stack.workers[n].hostname: n for n in alive}
    counts = dict.fromkeys(alive, 0)
    for e in ctx.ledger.in_flight():
        if e.host in by_host:
            counts[by_host[e.host]] += 1
    return max(alive, key=lambda n: (counts[n], -alive.index(n)))


def _target_worker(ctx: FaultContext, spec: dict[str, Any]) -> str:
    target = str(spec.get("target", "busiest"))
    if target == "busiest":
        return _busiest_worker(ctx)
    worker = ctx.stack.workers.get(target)
    if worker is None or not worker.proc.alive():
        raise StackError(f"fault target worker {target!r} is not running; live workers: {alive_workers(ctx.stack)}")
    return target


def _exit_and_replace(ctx: FaultContext, name: str, sig: int, spec: dict[str, Any]) -> dict[str, Any]:
    proc = ctx.stack.workers[name].proc
    pid = ctx.stack.kill_worker(name, sig)
    at = time.time()
    exited = proc.wait(SHUTDOWN_TIMEOUT_S if sig != signal.SIGKILL else 10)
    detail: dict[str, Any] = {"pid": pid, "exited": exited, "exit_s": round(time.time() - at, 3)}
    if not exited:
        proc.stop(timeout=5)  # a shutdown that hangs is a finding; end it so the run can go on
        detail["forced"] = True
    if spec.get("replace", True):
        replacement = ctx.stack.start_worker()
        detail["replacement"] = replacement.name
        ctx.log(f"started replacement worker {replacement.name} (pid {replacement.proc.pid})")
    return {"at": at, **detail}


def _running(pid: int) -> bool:
    """Alive and not a zombie: a child killed a moment ago stays listed until its parent reaps it."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


VICTIMS = ("oldest", "newest", "random")


# A child killed in the first moments of its task may die before the worker's main process has read the
# child's ACK for the job: billiard then puts the job back and another child runs it again, whatever
# task_reject_on_worker_lost says (celery.concurrency.asynpool.AsynPool.on_partial_read). A kill meant to
# measure that setting waits until the task has run this long (the child sends that ACK before the task
# starts, so a few event-loop turns of the main process are enough, and the lab's probes run from 0.1 s);
# ``settle_s: 0`` aims at the race instead.
SETTLE_S = 0.02


def kill_pool_child(ctx: FaultContext, spec: dict[str, Any]) -> FaultRecord:
    """SIGKILL a busy pool child of a worker: by ``victim``, the one running the oldest in-flight probe (the
    default), the newest, or a random busy one (seeded by the ledger run, so a journal can be replayed); a
    child counts as busy once its probe has run ``settle_s`` seconds (default SETTLE_S), and is frozen while
    that is confirmed, so the signal lands on a task still running."""
    name = _target_worker(ctx, spec)
    worker = ctx.stack.workers[name]
    victim = str(spec.get("victim", "oldest"))
    settle = float(spec.get("settle_s", SETTLE_S))
    rng = random.Random(f"{ctx.ledger.run}:{name}")

    def candidate() -> int | None:
        children = set(ctx.stack.pool_children(name))
        settled = time.time() - settle
        running = ctx.ledger.in_flight()
        busy = [e.pid for e in running if e.pid in children and e.start <= settled and _running(e.pid)]
        if not busy:
            return None
        return {"oldest": busy[0], "newest": busy[-1]}.get(victim) or rng.choice(busy)

    def frozen_busy() -> int | None:
        """A busy child, frozen (SIGSTOP) and seen still busy: between choosing a child and killing it, its
        task could finish (the oldest probe is the likeliest to), and the kill would hit nothing."""
        pid = candidate()
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        still = False
        try:
            still = any(e.pid == pid for e in ctx.ledger.in_flight())
        finally:
            if not still:  # let it go on (also when the ledger could not be read)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        return pid if still else None

    try:
        pid = wait_until(frozen_busy, timeout=10, what=f"a busy pool child of {name}", interval=0.02)
        busy = True
    except StackError:
        children = ctx.stack.pool_children(name)
        if not children:
            raise StackError(f"worker {name} has no pool children to kill (is the pool prefork?)") from None
        pid, busy = children[0], False
    sig = SIGNALS[str(spec.get("signal", "SIGKILL"))]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        if sig != signal.SIGKILL:  # a stopped process only acts on other signals once it runs again
            os.kill(pid, signal.SIGCONT)
    at = time.time()
    ctx.log(f"{signal.Signals(sig).name} pool child {pid} of {name}")
    detail = {"pid": pid, "busy": busy, "victim": victim, "settle_s": settle}
    return FaultRecord("kill_pool_child", f"{worker.hostname}/pool-child", at, detail)


def _worker_signal(kind: str, sig: int) -> Callable[[FaultContext, dict[str, Any]], FaultRecord]:
    def fault(ctx: FaultContext, spec: dict[str, Any]) -> FaultRecord:
        name = _target_worker(ctx, spec)
        hostname = ctx.stack.workers[name].hostname
        ctx.log(f"{signal.Signals(sig).name} worker {name} main process")
        detail = _exit_and_replace(ctx, name, sig, spec)
        return FaultRecord(kind, f"{hostname}/main", detail.pop("at"), detail)

    fault.__doc__ = f"{signal.Signals(sig).name} a worker's main process, wait for it to exit, start a replacement."
    return fault


def _blocked_in_fetch(view: RedisBrokerView, pid: int, redis_port: int) -> bool:
    """Is the worker's main process blocked in a fetch (BRPOP/BLMOVE) on the broker, per Redis' CLIENT LIST?
    Its connections are told apart from everyone else's by their local ports."""
    try:
        conns = psutil.Process(pid).net_connections("tcp")
    except psutil.NoSuchProcess:
        return False
    mine = {c.laddr.port for c in conns if c.raddr and c.raddr.port == redis_port}
    return any(port in mine for port, _cmd in view.fetching_clients())


def kill_worker_mid_fetch(ctx: FaultContext, spec: dict[str, Any]) -> FaultRecord:
    """Catch a worker's main process with a fetch in flight, and SIGKILL it there (Redis broker only).

    Freeze the idle worker (SIGSTOP) while Redis shows it blocked in BRPOP/BLMOVE, publish one more probe
    (recorded as sent first), wait until Redis has handed that message to the frozen worker's pending fetch
    (it left the queue list, so it sits unread in the worker's socket), then SIGKILL the worker and start a
    replacement. With kombu's BRPOP the message is now nowhere; with the reliable fetch it waits in the
    dead consumer's inflight list for the sweep. Deterministic, where a SIGKILL at a random moment hits this
    window about once in 15 kills."""
    stack = ctx.stack
    if stack.broker != "redis" or "redis" not in stack.ports:
        raise StackError("kill_worker_mid_fetch needs the lab's own Redis as the broker (it catches a BRPOP/BLMOVE)")
    name = _target_worker(ctx, spec)
    worker = stack.workers[name]
    pid = worker.proc.pid
    view = stack.broker_view()
    if not isinstance(view, RedisBrokerView):
        raise StackError("kill_worker_mid_fetch needs a Redis broker view")
    port = stack.ports["redis"]
    bait: str | None = None
    attempts = 0
    try:
        while attempts < 10:
            attempts += 1
            wait_until(lambda: _blocked_in_fetch(view, pid, port), timeout=10, what=f"worker {name} idle in a fetch")
            os.kill(pid, signal.SIGSTOP)
            if not _blocked_in_fetch(view, pid, port):  # its fetch timed out just now: let it issue the next
                os.kill(pid, signal.SIGCONT)
                continue
            bait = str(uuid.uuid4())
            ctx.ledger.mark_sent([bait])
            send_probe(stack.celery, "sleep", ctx.ledger.run, bait)
            with contextlib.suppress(StackError):
                wait_until(lambda: view.depth() == 0, timeout=0.5, what="the fetch to take the message")
            if view.depth() == 0:
                break
            os.kill(pid, signal.SIGCONT)  # the fetch expired first: the worker runs this bait; try again
        else:
            raise StackError(f"could not catch worker {name} with a fetch in flight in {attempts} attempts")
    except BaseException:
        # Never leave the worker frozen: a SIGSTOPped worker looks alive, so nothing would ever replace it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        raise
    ctx.log(f"SIGKILL worker {name} main process, frozen with message {bait} in its fetch reply")
    detail = _exit_and_replace(ctx, name, signal.SIGKILL, spec)
    detail.update({"bait": bait, "attempts": attempts})
    return FaultRecord("kill_worker_mid_fetch", f"{worker.hostname}/main", detail.pop("at"), detail)


def restart_broker(ctx: FaultContext, spec: dict[str, Any]) -> FaultRecord:
    """Kill the broker (SIGKILL by default: a crash), keep it down ``duration_s`` (default 0: restart at
    once), and start it again on the same port and data dir."""
    stack = ctx.stack
    member = stack.broker
    sig = SIGNALS[str(spec.get("signal", "SIGKILL"))]
    outage = float(spec.get("duration_s", 0.0))
    proc = stack.procs[member]
    pid = proc.pid
    stack.signal_member(member, sig)
    at = time.time()
    exited = proc.wait(10)
    ctx.log(f"{signal.Signals(sig).name} broker {member} (pid {pid}); restarting it after {outage:g}s down")
    if (left := at + outage - time.time()) > 0:
        time.sleep(left)  # the fault itself: the broker stays down this long
    stack.restart_member(member)
    detail: dict[str, Any] = {"pid": pid, "exited": exited, "outage_s": outage, "down_s": round(time.time() - at, 3)}
    if member == "redis":
        detail["aof"] = stack.config.redis_aof
        target = "redis-aof" if stack.config.redis_aof else "redis-no-persistence"
    else:
        target = member  # durable queues and persistent messages: RabbitMQ's counterpart of AOF
    return FaultRecord("restart_broker", target, at, detail)


def pause_broker(ctx: FaultContext, spec: dict[str, Any]) -> FaultRecord:
    """SIGSTOP the broker for ``duration_s``, then SIGCONT it."""
    duration = float(spec.get("duration_s", 3.0))
    member = ctx.stack.broker
    pid = ctx.stack.procs[member].pid
    ctx.stack.signal_member(member, signal.SIGSTOP)
    at = time.time()
    ctx.log(f"SIGSTOP broker {member} (pid {pid}) for {duration:g}s")
    try:
        # Evidence that the fault landed: the kernel reports the broker stopped.
        paused = wait_until(lambda: _stopped(pid), timeout=5, what=f"broker {member} stopped", interval=0.01)
        time.sleep(duration)  # the fault itself: the broker stays frozen this long
    finally:
        ctx.stack.signal_member(member, signal.SIGCONT)
    return FaultRecord("pause_broker", member, at, {"pid": pid, "duration_s": duration, "paused": paused})


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def partition_network(ctx: FaultContext, spec: dict[str, Any]) -> FaultRecord:
    """Cut the workers off Redis (broker, result backend, cache) for ``duration_s``, then heal: the network
    proxy carries no bytes meanwhile, so the workers see silence, not errors (lab/netproxy.py)."""
    duration = float(spec.get("duration_s", 3.0))
    ctx.stack.net("partition", on=True)
    at = time.time()
    ctx.log(f"network partition between the workers and Redis for {duration:g}s")
    try:
        time.sleep(duration)  # the fault itself: the partition lasts this long
    finally:
        state = ctx.stack.net("partition", on=False)
    return FaultRecord("partition_network", "workers<->redis", at, {"duration_s": duration, "proxy": state})


def reset_connections(ctx: FaultContext, _spec: dict[str, Any]) -> FaultRecord:
    """Abort every open worker<->Redis connection with a TCP RST (the proxy's); the workers reconnect."""
    result = ctx.stack.net("reset")
    at = time.time()
    ctx.log(f"reset {result['reset']} worker<->Redis connections")
    return FaultRecord("reset_connections", "workers<->redis", at, {"reset": result["reset"]})


FAULTS: dict[str, Callable[[FaultContext, dict[str, Any]], FaultRecord]] = {
    "kill_pool_child": kill_pool_child,
    "kill_worker_main": _worker_signal("kill_worker_main", signal.SIGKILL),
    "kill_worker_mid_fetch": kill_worker_mid_fetch,
    "sigterm_worker": _worker_signal("sigterm_worker", signal.SIGTERM),
    "sigquit_worker": _worker_signal("sigquit_worker", signal.SIGQUIT),
    "restart_broker": restart_broker,
    "pause_broker": pause_broker,
    "partition_network": partition_network,
    "reset_connections": reset_connections,
}


# The provider options each fault reads (besides type and kind): an experiment naming any other is refused,
# so a typo or an option the fault ignores (a restart's downtime, once) cannot pass silently.
FAULT_OPTIONS: dict[str, frozenset[str]] = {
    "kill_pool_child": frozenset({"target", "signal", "victim", "settle_s"}),
    "kill_worker_main": frozenset({"target", "replace"}),
    "kill_worker_mid_fetch": frozenset({"target", "replace"}),
    "sigterm_worker": frozenset({"target", "replace"}),
    "sigquit_worker": frozenset({"target", "replace"}),
    "restart_broker": frozenset({"signal", "duration_s"}),
    "pause_broker": frozenset({"duration_s"}),
    "partition_network": frozenset({"duration_s"}),
    "reset_connections": frozenset(),
}


# --- rollbacks: put back what the method took away, so the queue can drain ---------------------------------
def resume_broker(ctx: FaultContext, _spec: dict[str, Any]) -> str:
    proc = ctx.stack.procs[ctx.stack.broker]
    if not proc.alive():
        ctx.stack.restart_member(ctx.stack.broker)
        return "restarted the broker"
    with contextlib.suppress(psutil.NoSuchProcess):
        if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
            proc.send(signal.SIGCONT)
            return "resumed the broker"
    return "broker running"


def ensure_workers(ctx: FaultContext, spec: dict[str, Any]) -> str:
    want = int(spec.get("count", ctx.workers))
    started = []
    while len(alive_workers(ctx.stack)) < want:
        started.append(ctx.stack.start_worker().name)
    return f"started {started}" if started else f"{want} workers running"


def heal_network(ctx: FaultContext, _spec: dict[str, Any]) -> str:
    ctx.stack.net("partition", on=False)
    ctx.stack.net("latency", ms=0)
    return "network healed"


ROLLBACKS: dict[str, Callable[[FaultContext, dict[str, Any]], str]] = {
    "resume_broker": resume_broker,
    "ensure_workers": ensure_workers,
    "heal_network": heal_network,
}
