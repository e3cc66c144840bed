"""The committed docs/reliability-matrix.md: produced by the current generator from the committed data, with
every cell the matrix defines, recommendations its evidence bears out, and controls that agree with it."""

from __future__ import annotations

import json

from chaos.experiment import load_experiment
from chaos.matrix import CI_CELLS, select
from chaos.matrix_doc import RECOMMENDATIONS, recommendation_failures, render
from lab.profiles import ROOT

DOC = ROOT / "docs" / "reliability-matrix.md"
DATA = json.loads(DOC.with_suffix(".json").read_text())
REGENERATE = "regenerate it with the command at the top of docs/reliability-matrix.md"

# The chaos suite's controls and the matrix cell that measures the same fault on the same setting.
# And the experiment whose duplicates come from the config alone.
DUPLICATES = ("visibility-timeout-duplicates", "redis/none/visibility-shorter-than-task")
CONTROL_CELLS = {
    "control-acks-early-pool-child": "redis/pool-child-sigkill/acks-early",
    "control-no-reject-on-worker-lost": "redis/pool-child-sigkill/acks-late-no-reject",
    "control-broker-no-persistence": "redis/broker-restart-no-persistence/reference",
}


def test_the_doc_is_the_generators_output_for_its_data() -> None:
    assert render(DATA) == DOC.read_text(), f"docs/reliability-matrix.md is stale: {REGENERATE}"


def test_the_doc_has_every_cell_on_both_brokers() -> None:
    expected = {c.id for c in select(brokers="redis,rabbitmq")}
    assert set(DATA["cells"]) == expected, f"missing: {sorted(expected - set(DATA['cells']))}; {REGENERATE}"
    for cell in DATA["cells"].values():
        assert cell["outcome"] != "invalid", cell["id"]
        assert cell["outcome"] == "n/a" or len(cell["runs"]) >= 2, cell["id"]
    for run in DATA["runs"]:
        assert {"python", "celery", "kombu", "redis-py"} <= set(run["versions"])
        assert run["command"].startswith("lab chaos matrix") and run["machine"]["load_avg"]
    assert any("RabbitMQ" in str(v) for run in DATA["runs"] for v in run["versions"].values())


def test_every_recommendation_is_borne_out_by_its_evidence() -> None:
    assert recommendation_failures(DATA) == []
    for rec in RECOMMENDATIONS:
        for ev in rec.evidence:
            assert ev.holds(DATA["cells"]) is True, f"{rec.setting}: {ev.describe()} is not measured cleanly"


def test_the_controls_loss_is_what_the_matrix_measured() -> None:
    for control, cell_id in CONTROL_CELLS.items():
        exp = load_experiment(control)
        assert exp.expected == "loss"
        cell = DATA["cells"][cell_id]
        assert "lost" in cell["outcome"].split("+"), (control, cell)
        # The same fault on both sides.
        cell_fault = next(c for c in select() if c.id == cell_id).fault
        assert cell_fault.provider is not None
        assert next(f["provider"]["kind"] for f in exp.faults) == cell_fault.provider["kind"]


def test_the_visibility_duplicates_experiment_is_what_the_matrix_measured() -> None:
    name, cell_id = DUPLICATES
    exp = load_experiment(name)
    assert exp.faults == [] and exp.config["overrides"]["CELERY_VISIBILITY_TIMEOUT"] < exp.config["task_duration_s"]
    assert "twice" in DATA["cells"][cell_id]["outcome"].split("+")


def test_the_ci_cells_are_stable_in_the_doc() -> None:
    # CI compares one repeat against these: a cell whose repeats disagreed would let any result pass.
    unstable = [c for c in CI_CELLS if DATA["cells"][c]["outcome"] in ("unstable", "invalid", "n/a")]
    assert unstable == [], f"choose stable cells for the CI subset (chaos/matrix.py CI_CELLS): {unstable}"
