"""Grafana dashboards as code: committed JSON is what the code builds, and it is well-formed."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.build import DATASOURCE_UID, OUT_DIR, all_dashboards, main, render
from dashboards.check import collect_items, substitute
from dashboards.schema import dashboard_schema, errors

GRAFANA = OUT_DIR.parent
BUILT = all_dashboards()


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in data["panels"] if p["type"] != "row"]


@pytest.mark.parametrize("name", sorted(BUILT))
def test_committed_json_is_what_the_code_generates(name: str) -> None:
    path = OUT_DIR / f"{name}.json"
    assert path.exists(), f"{path} missing: run `python -m dashboards.build`"
    assert path.read_text() == render(BUILT[name]), f"{path} is stale: run `python -m dashboards.build`"


def test_build_check_reports_a_stale_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("dashboards.build.OUT_DIR", tmp_path)
    assert main([]) == 0
    assert main(["--check"]) == 0
    (tmp_path / "chaos.json").write_text("{}")
    assert main(["--check"]) == 1


@pytest.mark.parametrize("name", sorted(BUILT))
def test_json_is_valid_against_the_schema_derived_from_the_sdk(name: str) -> None:
    # The SDK ships no JSON Schema file; dashboards.schema derives one from its generated models' type hints.
    data = json.loads((OUT_DIR / f"{name}.json").read_text())
    assert list(errors(data)) == []


def _first_timeseries(data: dict[str, Any]) -> int:
    return next(i for i, p in enumerate(data["panels"]) if p["type"] == "timeseries")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("gridPos", "h"), "8", "gridPos/h: '8' is not of type 'integer'"),
        (("title",), 42, "title: 42 is not of type 'string'"),
        (("targets", 0, "expr"), 1, "targets/0/expr: 1 is not of type 'string'"),  # the Prometheus query model
        (("options", "legend", "showLegend"), "yes", "showLegend: 'yes' is not of type 'boolean'"),  # timeseries
        (("fieldConfig", "defaults", "custom", "fillOpacity"), "10", "fillOpacity: '10' is not of type 'number'"),
        (("legendz",), {"typo": True}, "Additional properties are not allowed ('legendz' was unexpected)"),
    ],
)
def test_schema_rejects_a_wrong_value_type_the_sdk_decoder_accepts(
    path: tuple[Any, ...], value: Any, message: str
) -> None:
    data = json.loads((OUT_DIR / "chaos.json").read_text())
    index = _first_timeseries(data)
    node = data["panels"][index]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    # The SDK's decoder takes it: a round trip alone would not notice the wrong type.
    again = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    if path != ("legendz",):
        assert again == data
    found = list(errors(data))
    assert len(found) == 1 and found[0].startswith(f"panels/{index}") and found[0].endswith(message), found


def test_schema_is_draft_2020_12_and_covers_the_panel_plugins() -> None:
    schema = dashboard_schema()
    assert schema["$schema"].endswith("/2020-12/schema")
    defs = schema["$defs"]
    assert {"dashboard.Dashboard", "dashboard.Panel", "dashboard.GridPos", "prometheus.Dataquery"} <= set(defs)
    assert {"timeseries.Options", "stat.Options"} <= set(defs)
    assert defs["dashboard.GridPos"]["required"] == ["h", "w", "x", "y"]


@pytest.mark.parametrize("name", sorted(BUILT))
def test_json_round_trips_through_the_sdk_models(name: str) -> None:
    # Besides the schema: decoding the JSON into the SDK's models and encoding it again must give the same
    # document.
    data = json.loads((OUT_DIR / f"{name}.json").read_text())
    again = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    assert json.loads(render(again)) == data


@pytest.mark.parametrize("name", sorted(BUILT))
def test_every_panel_has_datasource_unit_legend_and_targets(name: str) -> None:
    data = BUILT[name]
    assert data["uid"] and data["title"]
    assert {v["name"] for v in data["templating"]["list"]} == {"queue", "task", "worker"}
    for p in panels(data):
        assert p["datasource"]["uid"] == DATASOURCE_UID, p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["legendFormat"], (p["title"], t["refId"])
            assert t["datasource"]["uid"] == DATASOURCE_UID
        if p["type"] == "timeseries":
            assert p["options"]["legend"]["showLegend"] is True


def test_the_three_dashboards_and_what_the_issue_asks_of_them() -> None:
    titles = {d["title"] for d in BUILT.values()}
    assert titles == {"Celery overview", "Load test", "Chaos"}
    overview = " ".join(p["title"] for p in panels(BUILT["celery-overview"])).lower()
    for word in ("throughput", "failure ratio", "runtime", "queue wait", "queue length", "workers up", "active"):
        assert word in overview
    assert "retries" in overview and "lost-task gap" in overview
    load_exprs = " ".join(t["expr"] for p in panels(BUILT["load-test"]) for t in p["targets"])
    for metric in ("locust_users", "locust_requests_total", "locust_failures_total", "locust_response_time_seconds"):
        assert metric in load_exprs
    assert 'type="task_e2e"' in load_exprs and "celery_task_succeeded_total" in load_exprs
    chaos = BUILT["chaos"]
    assert chaos["annotations"]["list"][0]["expr"].count("celery_lab_faults_total") >= 1


def test_provisioning_points_at_the_fixed_datasource_uid() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == [DATASOURCE_UID]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "celery-lab.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_substitution_leaves_no_grafana_variables() -> None:
    for item in collect_items():
        expr = substitute(item.expr)
        assert "$" not in expr, (item.where, expr)


def test_round_trip_catches_what_grafana_would_not_know() -> None:
    data = json.loads((OUT_DIR / "chaos.json").read_text())
    data["panels"][1]["legendz"] = {"typo": True}
    again = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    assert again != data


def test_no_panel_or_rule_reads_flowers_worker_online() -> None:
    # flower_worker_online stays 1 for minutes after a worker is SIGKILLed (docs/metrics.md): the lab's
    # worker panels and alerts read celery_worker_up, which heartbeat expiry sets to 0.
    exprs = [item.expr for item in collect_items()]
    assert len(exprs) > 20
    assert [e for e in exprs if "flower_worker_online" in e] == []
