"""The checker is pure: examples with known answers, and invariants over generated histories."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checker import check, classify_leftovers
from lab.ledger import Execution


def run(task_id: str, attempt: int, start: float, finish: float | None, redelivered: bool = False) -> Execution:
    return Execution(task_id, attempt, "w1@x", 1, start, finish, redelivered)


def split(executions: list[Execution]) -> tuple[list[Execution], list[Execution]]:
    return executions, [e for e in executions if e.finish is not None]


def test_worker_kill_history() -> None:
    # a: ran once. b: interrupted by the fault at t=10, redelivered, done at 15. c: never ran, still queued.
    # d: ran twice (a duplicate). e: ran but was never sent.
    starts, finishes = split(
        [
            run("a", 1, 1, 2),
            run("b", 1, 9, None),
            run("b", 2, 14, 15),
            run("d", 1, 3, 4),
            run("d", 2, 12, 13),
            run("e", 1, 5, 6),
        ]
    )
    sent = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}
    r = check(sent, starts, finishes, fault_times=[10.0], queued=["c"])
    assert r.ledger_summary() == {
        "sent": 4,
        "completed": 3,
        "lost": 1,
        "duplicated": 1,
        "unexpected": 1,
        "recovered": 1,
        "reruns": 2,
        "gone": 0,
        "parked": 0,
        "queued": 1,
    }
    assert r.duplicated_counts == {"d": 2}
    assert r.lost_ids == ["c"]
    assert r.unexpected_ids == ["e"]
    assert r.hit == 1
    assert r.redelivery == [5.0]
    assert r.redelivery_s() == {"p50": 5.0, "max": 5.0}
    assert r.leftovers == {"queued": 1, "unacked": 0, "gone": 0}


def test_interrupted_and_never_redelivered_is_lost_not_recovered() -> None:
    starts, finishes = split([run("x", 1, 1, None), run("y", 1, 1, 2)])
    r = check({"x": 0, "y": 0}, starts, finishes, fault_times=[1.5], unacked=["x"])
    assert (r.lost, r.hit, r.recovered) == (1, 1, 0)
    assert r.leftovers == {"queued": 0, "unacked": 1, "gone": 0}
    assert r.redelivery_s() == {"p50": None, "max": None}


def test_redelivered_after_a_fault_is_a_hit() -> None:
    # r: reserved by the killed worker, never started there, restored after the visibility timeout.
    # s: finished, but its ack died with the worker: it runs again (a duplicate). q: a plain later execution.
    starts, finishes = split(
        [run("r", 1, 16, 16.5, redelivered=True), run("s", 1, 9, 9.5), run("s", 2, 15, 15.5, True), run("q", 1, 12, 13)]
    )
    r = check({"r": 0, "s": 0, "q": 0}, starts, finishes, fault_times=[10.0])
    assert (r.hit, r.recovered, r.duplicated, r.lost) == (2, 2, 1, 0)
    assert r.redelivery == [5.5, 6.5]


def test_redelivery_is_measured_to_the_re_execution() -> None:
    # The child finished 0.01 s after its parent was killed, the ack died with the parent, the task ran again.
    starts, finishes = split([run("k", 1, 9.9, 10.01), run("k", 2, 14, 14.5, redelivered=True)])
    r = check({"k": 0}, starts, finishes, fault_times=[10.0])
    assert (r.hit, r.recovered, r.duplicated) == (1, 1, 1)
    assert r.redelivery == [4.5]


def test_redelivered_without_a_fault_before_it_is_not_a_hit() -> None:
    starts, finishes = split([run("v", 1, 1, 3), run("v", 2, 2, 4, redelivered=True)])
    r = check({"v": 0}, starts, finishes, fault_times=[5.0])
    assert (r.hit, r.duplicated) == (0, 1)


def test_interruption_after_the_last_fault_is_not_a_hit() -> None:
    starts, finishes = split([run("x", 1, 5, None)])
    r = check({"x": 0}, starts, finishes, fault_times=[1.0])
    assert r.hit == 0
    assert r.lost == 1


def test_clean_run_passes_everything() -> None:
    starts, finishes = split([run(str(i), 1, i, i + 0.5) for i in range(10)])
    r = check({str(i): 0 for i in range(10)}, starts, finishes)
    assert r.ledger_summary() == {
        "sent": 10,
        "completed": 10,
        "lost": 0,
        "duplicated": 0,
        "unexpected": 0,
        "recovered": 0,
        "reruns": 0,
        "gone": 0,
        "parked": 0,
        "queued": 0,
    }
    assert r.leftovers == {"queued": 0, "unacked": 0, "gone": 0}
    assert r.hit_summary() == {"count": 0, "in_flight_at_fault": 0, "caused_gone": 0, "ids": []}


def test_in_flight_at_a_fault_counts_executions_running_when_it_struck() -> None:
    # a ran across the fault (a warm shutdown let it finish), b finished before it, c started after it.
    starts, finishes = split([run("a", 1, 9, 11), run("b", 1, 1, 2), run("c", 1, 12, 13)])
    r = check({"a": 0, "b": 0, "c": 0}, starts, finishes, fault_times=[10.0])
    assert (r.hit, r.in_flight_at_fault) == (0, 1)
    nothing = check({"b": 0}, *split([run("b", 1, 1, 2)]), fault_times=[10.0])
    assert (nothing.hit, nothing.in_flight_at_fault) == (0, 0)  # the fault struck an idle worker


def test_a_loss_is_caused_only_when_a_fault_explains_it_and_it_is_gone() -> None:
    # h: interrupted by the fault, gone. n: sent before the fault, never started, gone (the broker or the
    # worker held it). p: interrupted, but parked unacked (comes back). late: sent after the fault, never
    # started (no fault explains it). bait: named by the fault itself (caught in a fetch), gone.
    starts, finishes = split([run("h", 1, 9, None), run("p", 1, 9, None)])
    sent = {"h": 0.0, "n": 5.0, "p": 0.0, "late": 11.0, "bait": 10.5}
    r = check(sent, starts, finishes, fault_times=[10.0], unacked=["p"], named_by_faults=["bait"])
    assert sorted(r.caused_gone) == ["bait", "h", "n"]
    assert r.ledger_summary()["gone"] == 4 and r.ledger_summary()["parked"] == 1
    assert r.hit_summary()["caused_gone"] == 3
    assert check(sent, starts, finishes, fault_times=[]).caused_gone == []


def test_leftovers_prefer_queued_over_unacked() -> None:
    counts = classify_leftovers(["a", "b", "c"], queued=["a"], unacked=["a", "b"])
    assert counts == {"queued": 1, "unacked": 1, "gone": 1}


# --- invariants over generated histories ------------------------------------------------------------------
# (start, duration or None for an interrupted execution, redelivered flag)
execution = st.tuples(st.floats(0, 100), st.one_of(st.none(), st.floats(0, 10)), st.booleans())
task = st.tuples(st.booleans(), st.lists(execution, max_size=4))  # (sent?, executions)
history = st.tuples(
    st.lists(task, max_size=30),
    st.lists(st.floats(0, 110), max_size=3),
    st.lists(st.integers(0, 29), max_size=10),
    st.lists(st.integers(0, 29), max_size=10),
)


@settings(max_examples=300, deadline=None)
@given(history)
def test_checker_invariants(h: tuple) -> None:
    tasks, faults, queued_idx, unacked_idx = h
    sent: dict[str, float] = {}
    executions = []
    for n, (was_sent, runs) in enumerate(tasks):
        tid = f"t{n}"
        if was_sent:
            sent[tid] = 0.0
        for attempt, (start, dur, redelivered) in enumerate(runs, 1):
            executions.append(run(tid, attempt, start, None if dur is None else start + dur, redelivered))
    starts, finishes = split(executions)
    queued = [f"t{i}" for i in queued_idx]
    unacked = [f"t{i}" for i in unacked_idx]
    r = check(sent, starts, finishes, faults, queued, unacked)

    finished = {e.id for e in finishes}
    n_finishes = {tid: sum(e.id == tid for e in finishes) for tid in finished}
    # An independent recount of every number, straight from the generated model.
    assert r.sent == len(sent)
    assert r.lost == sum(tid not in finished for tid in sent)
    assert r.completed == sum(tid in finished for tid in sent)
    assert r.duplicated == sum(n_finishes.get(tid, 0) > 1 for tid in sent)
    assert r.unexpected == len(finished - set(sent))
    assert r.reruns == sum(len(runs) > 1 for _, runs in tasks)
    assert r.executions == len(finishes)
    # Partitions and bounds.
    assert r.ok + r.duplicated + r.lost == r.sent
    assert sum(r.leftovers.values()) == r.lost
    assert r.leftovers["queued"] == len(set(r.lost_ids) & set(queued))
    assert r.recovered <= r.hit <= r.sent
    assert r.recovered <= r.completed
    assert len(r.redelivery) <= r.recovered
    assert all(d >= 0 for d in r.redelivery)
    assert set(r.lost_ids).isdisjoint(finished)
    assert all(n > 1 for n in r.duplicated_counts.values())
    if not faults:
        assert r.hit == 0
        assert r.redelivery == []
    p = r.redelivery_s()
    if r.redelivery:
        assert p["p50"] is not None and p["max"] is not None
        assert p["p50"] <= p["max"] + 1e-9
