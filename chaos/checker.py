"""The checker: what was sent against what ran, in the spirit of Jepsen's total-queue check. Pure.

Run once the queue has drained (or progress has stalled past the redelivery horizon). Definitions, over task
ids that the experiment marked as sent before publishing:

- completed: sent and finished at least once; ok: finished exactly once; duplicated: finished more than once
  (``duplicated_counts`` gives how often); lost: sent, never finished; unexpected: finished, never sent.
- reruns: ids started more than once (a retry, a requeue after a lost worker, a visibility-timeout restore).
- hit: ids a fault took from a worker. A message the fault names itself (the one ``kill_worker_mid_fetch``
  caught in a fetch), or an execution the fault interrupted (started at or before a fault,
  never finished; the fault is the first one at or after that start), or an execution the broker redelivered
  after a fault (kombu's ``redelivered`` flag: a restore after the visibility timeout, or a requeue; the fault
  is the last one before that start). The second catches messages a killed worker had reserved but not
  started, and ones whose task finished but whose ack died with the worker. recovered: hit and completed.
- redelivery: per recovered id, the time from the fault that hit it to the finish of its first execution
  started after that fault (or, failing that, its first finish after the fault).
- in flight at a fault: ids with an execution running when a fault struck (started at or before it, not
  finished before it). A fault that struck while nothing ran tested nothing: no verdict may pass on it.
- leftovers: every lost id, classified from the broker after the run: still ``queued`` in the Redis list,
  parked in Redis' ``unacked`` hash (waiting for the visibility timeout), or ``gone``.
- caused: lost ids a fault accounts for: hit, named by the fault itself (the message it caught in a fetch),
  or sent before the last fault and never started (held by the broker or a worker when it struck). A
  control's verdict counts only caused ids that are gone: a parked id comes back, and a loss no fault
  explains is not the control's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.ledger import Execution
from lab.stats import percentile


@dataclass
class Report:
    sent: int
    completed: int
    ok: int
    lost: int
    duplicated: int
    unexpected: int
    hit: int
    recovered: int
    reruns: int
    executions: int
    redelivery: list[float]
    leftovers: dict[str, int]
    in_flight_at_fault: int = 0
    hit_ids: list[str] = field(default_factory=list)
    caused_gone: list[str] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)
    duplicated_counts: dict[str, int] = field(default_factory=dict)
    unexpected_ids: list[str] = field(default_factory=list)
    rerun_counts: dict[str, int] = field(default_factory=dict)
    redelivery_by_id: dict[str, float] = field(default_factory=dict)

    def ledger_summary(self) -> dict[str, int]:
        """The counts; ``lost`` is split into ``gone`` (never coming back) and ``parked`` (held unacked by the
        broker until its visibility timeout restores it) and ``queued`` (still to run)."""
        keys = ("sent", "completed", "lost", "duplicated", "unexpected", "recovered", "reruns")
        out = {k: getattr(self, k) for k in keys}
        out.update(gone=self.leftovers["gone"], parked=self.leftovers["unacked"], queued=self.leftovers["queued"])
        return out

    def hit_summary(self, limit: int = 50) -> dict[str, Any]:
        return {
            "count": self.hit,
            "in_flight_at_fault": self.in_flight_at_fault,
            "caused_gone": len(self.caused_gone),
            "ids": self.hit_ids[:limit],
        }

    def redelivery_s(self) -> dict[str, float | None]:
        p50 = percentile(self.redelivery, 50)
        return {
            "p50": None if p50 is None else round(p50, 3),
            "max": round(max(self.redelivery), 3) if self.redelivery else None,
        }

    def details(self, limit: int = 50) -> dict[str, Any]:
        """Ids behind the counts (capped, sorted) so a journal stays readable at 10,000 tasks."""
        worst = sorted(self.duplicated_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return {
            "ok": self.ok,
            "hit": self.hit,
            "executions": self.executions,
            "lost_ids": self.lost_ids[:limit],
            "duplicated_counts": dict(worst),
            "unexpected_ids": self.unexpected_ids[:limit],
            "rerun_counts": dict(sorted(self.rerun_counts.items())[:limit]),
            "redelivery_by_id": {k: round(v, 3) for k, v in sorted(self.redelivery_by_id.items())[:limit]},
        }


def classify_leftovers(lost: Collection[str], queued: Collection[str], unacked: Collection[str]) -> dict[str, int]:
    out = {"queued": 0, "unacked": 0, "gone": 0}
    q, u = set(queued), set(unacked)
    for task_id in lost:
        # A message both queued and unacked (restored mid-snapshot) will run: count it as queued.
        out["queued" if task_id in q else "unacked" if task_id in u else "gone"] += 1
    return out


def check(
    sent: Mapping[str, float],
    starts: Sequence[Execution],
    finishes: Sequence[Execution],
    fault_times: Sequence[float] = (),
    queued: Collection[str] = (),
    unacked: Collection[str] = (),
    named_by_faults: Collection[str] = (),
) -> Report:
    finish_count = Counter(e.id for e in finishes)
    start_count = Counter(e.id for e in starts)
    sent_ids = set(sent)
    finished_ids = set(finish_count)

    completed = sent_ids & finished_ids
    lost = sorted(sent_ids - finished_ids)
    unexpected = sorted(finished_ids - sent_ids)
    duplicated = {i: finish_count[i] for i in completed if finish_count[i] > 1}
    reruns = {i: n for i, n in start_count.items() if n > 1}

    faults = sorted(fault_times)
    done_keys = {(e.id, e.attempt) for e in finishes}
    # The fault that hit an id: the first fault at or after the start of its earliest interrupted execution.
    hit_by: dict[str, float] = {}
    for e in sorted(starts, key=lambda e: e.start):
        if e.id not in sent_ids or (e.id, e.attempt) in done_keys or e.id in hit_by:
            continue
        fault = next((f for f in faults if f >= e.start), None)
        if fault is not None:
            hit_by[e.id] = fault
    for e in sorted(starts, key=lambda e: e.start):
        if e.redelivered and e.id in sent_ids and e.id not in hit_by:
            fault = next((f for f in reversed(faults) if f <= e.start), None)
            if fault is not None:
                hit_by[e.id] = fault

    named = set(named_by_faults)
    for task_id in sorted(named & sent_ids):
        # A message the fault itself caught (in a worker's fetch): hit by the first fault after it was sent.
        fault = next((f for f in faults if f >= sent[task_id]), faults[-1] if faults else None)
        if fault is not None:
            hit_by.setdefault(task_id, fault)

    finished_at = {(e.id, e.attempt): e.finish for e in finishes if e.finish is not None}
    in_flight = {
        e.id
        for e in starts
        if e.id in sent_ids
        for f in faults
        if e.start <= f and (finished_at.get((e.id, e.attempt)) is None or finished_at[(e.id, e.attempt)] >= f)
    }
    started = set(start_count)
    last_fault = faults[-1] if faults else None
    leftovers = classify_leftovers(lost, queued, unacked)
    q, u = set(queued), set(unacked)
    caused_gone = [
        i
        for i in lost
        if i not in q
        and i not in u
        and (i in hit_by or i in named or (last_fault is not None and i not in started and sent[i] <= last_fault))
    ]

    recovered = [i for i in hit_by if i in completed]
    runs_of: dict[str, list[Execution]] = {}
    for e in finishes:
        if e.finish is not None:
            runs_of.setdefault(e.id, []).append(e)
    redelivery: dict[str, float] = {}
    for task_id in recovered:
        fault = hit_by[task_id]
        # The re-execution's finish: a run that started before the fault and ended just after it (a child
        # finishing as its parent died) completed the old delivery, not the redelivered one.
        rerun = [e.finish for e in runs_of.get(task_id, []) if e.start >= fault and e.finish is not None]
        late = [e.finish for e in runs_of.get(task_id, []) if e.finish is not None and e.finish >= fault]
        if rerun or late:
            redelivery[task_id] = min(rerun or late) - fault

    return Report(
        sent=len(sent_ids),
        completed=len(completed),
        ok=len(completed) - len(duplicated),
        lost=len(lost),
        duplicated=len(duplicated),
        unexpected=len(unexpected),
        hit=len(hit_by),
        recovered=len(recovered),
        reruns=len(reruns),
        executions=len(finishes),
        redelivery=sorted(redelivery.values()),
        leftovers=leftovers,
        in_flight_at_fault=len(in_flight),
        hit_ids=sorted(hit_by),
        caused_gone=caused_gone,
        lost_ids=lost,
        duplicated_counts=duplicated,
        unexpected_ids=unexpected,
        rerun_counts=reruns,
        redelivery_by_id=redelivery,
    )
