"""The loss ledger: what was sent and every execution, in a redis-server outside the fault domain.

The ledger is never a db number on the broker: a broker restart without persistence would wipe the evidence
of what it lost. ``LedgerServer`` starts a dedicated redis-server (free port, own dir, PID-tracked) and
``Ledger`` is the one place that knows the key layout, for the experiment (writer of ``sent``), the probe
task (writer of executions) and the checker's input (reader of everything).

Keys, all under ``ledger:<run>:`` so several runs can share one server:
    sent        hash   task id -> epoch seconds, written BEFORE the message is published
    attempts    hash   task id -> executions started so far (HINCRBY gives each execution its number)
    starts      list   JSON {id, attempt, host, pid, start, redelivered}
    finishes    list   JSON {id, attempt, host, pid, start, finish}
    done        set    task ids with at least one finish (cheap drain checks)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from lab.procs import Proc, start_redis_server

LEDGER_ENV = "LAB_LEDGER_URL"
# Number the execution and append its start row in one server-side step. The row is spliced as text, not
# re-encoded by cjson, so start times keep full precision.
_RECORD_START = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('RPUSH', KEYS[2], '{"attempt": ' .. n .. ', ' .. string.sub(ARGV[2], 2))
return n
"""


@dataclass(frozen=True)
class Execution:
    """One run of a probe task, as the probe itself recorded it."""

    id: str
    attempt: int
    host: str
    pid: int
    start: float
    finish: float | None = None
    # The broker handed this message out before (kombu sets it on a restore or a requeue).
    redelivered: bool = False

    @classmethod
    def from_json(cls, raw: bytes | str) -> Execution:
        d = json.loads(raw)
        return cls(
            id=str(d["id"]),
            attempt=int(d["attempt"]),
            host=str(d.get("host", "")),
            pid=int(d.get("pid", 0)),
            start=float(d["start"]),
            finish=None if d.get("finish") is None else float(d["finish"]),
            redelivered=bool(d.get("redelivered", False)),
        )


@dataclass
class LedgerData:
    """Everything the checker needs from the ledger, read in one go after the run."""

    sent: dict[str, float]
    starts: list[Execution]
    finishes: list[Execution]


class Ledger:
    def __init__(self, url: str, run: str) -> None:
        self.url = url
        self.run = run
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def key(self, name: str) -> str:
        return f"ledger:{self.run}:{name}"

    # --- the experiment's side ----------------------------------------------------------------------------
    def mark_sent(self, ids: Iterable[str]) -> None:
        now = time.time()
        mapping = {i: now for i in ids}
        if mapping:
            self.client.hset(self.key("sent"), mapping=mapping)

    def completions(self) -> int:
        """Executions finished so far (duplicates included): the progress that triggers faults."""
        return int(self.client.llen(self.key("finishes")))

    def completed_ids(self) -> int:
        return int(self.client.scard(self.key("done")))

    def missing(self) -> int:
        """Sent ids not finished yet."""
        sent = self.client.hkeys(self.key("sent"))
        if not sent:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for chunk in _chunks(sent, 1000):
            pipe.smismember(self.key("done"), chunk)
        return sum(not flag for flags in pipe.execute() for flag in flags)

    def in_flight(self) -> list[Execution]:
        """Executions started and not (yet) finished, oldest first."""
        data = self.read()
        finished = {(e.id, e.attempt) for e in data.finishes}
        return sorted((e for e in data.starts if (e.id, e.attempt) not in finished), key=lambda e: e.start)

    def read(self) -> LedgerData:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key("sent"))
        pipe.lrange(self.key("starts"), 0, -1)
        pipe.lrange(self.key("finishes"), 0, -1)
        sent, starts, finishes = pipe.execute()
        return LedgerData(
            sent={k.decode(): float(v) for k, v in sent.items()},
            starts=[Execution.from_json(s) for s in starts],
            finishes=[Execution.from_json(f) for f in finishes],
        )

    # --- the probe's side ---------------------------------------------------------------------------------
    def record_start(self, task_id: str, host: str, pid: int, redelivered: bool = False) -> tuple[int, float]:
        start = time.time()
        row = {"id": task_id, "host": host, "pid": pid, "start": start, "redelivered": redelivered}
        # One atomic step: a process killed between numbering the attempt and recording it would leave a gap.
        keys = [self.key("attempts"), self.key("starts")]
        attempt = int(self.client.eval(_RECORD_START, 2, *keys, task_id, json.dumps(row)))
        return attempt, start

    def record_finish(self, task_id: str, attempt: int, host: str, pid: int, start: float) -> None:
        row = {"id": task_id, "attempt": attempt, "host": host, "pid": pid, "start": start, "finish": time.time()}
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self.key("finishes"), json.dumps(row))
        pipe.sadd(self.key("done"), task_id)
        pipe.execute()

    def close(self) -> None:
        self.client.close()


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class LedgerServer:
    """A redis-server of its own for the ledger (free port, own dir, stopped on exit)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: Proc | None = None
        self.url = ""

    def __enter__(self) -> LedgerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LedgerServer:
        self.proc, port = start_redis_server("ledger", self.data_dir, self.data_dir / "ledger.log", ready_timeout=30)
        self.url = f"redis://127.0.0.1:{port}/0"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)
