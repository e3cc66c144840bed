"""Selector extraction for ``lab dashboards check``: what an expression reads, found by a PromQL parser.

Pure: no Prometheus. Whether a selector matched series during a run is the live test's
(tests/orchestration/test_dashboards_traffic.py), on the real Prometheus of its Stack.
"""

from __future__ import annotations

import json

import pytest

from dashboards.build import DashboardSpec, PanelSpec, Target, build, empty_ok_declarations
from dashboards.check import Item, Selector, collect_items, declared_empty_ok, item_selectors, selectors
from dashboards.schema import errors

ALL = '=~".*"'


def found(expr: str) -> list[str]:
    return [str(s) for s in selectors(expr)]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # The issue's shape: `or vector(0)` answers whatever the left side reads; both sides' selectors count.
        (
            'sum(rate(a_total{x="y"}[5m])) / sum(rate(b[5m])) or vector(0)',
            ['a_total{x="y"}', "b"],
        ),
        # `le` is a grouping label, `histogram_quantile` a function, $__rate_interval a macro.
        (
            "histogram_quantile(0.95, sum by (le) (rate(c_bucket[$__rate_interval])))",
            ["c_bucket"],
        ),
        # label_replace's string arguments name labels and a regex, not metrics; "$1" is no Grafana variable.
        (
            'label_replace(up{job="api"}, "celery_worker_up", "$1", "instance", "(.*):.*")',
            ['up{job="api"}'],
        ),
        # Vector matching: on()/group_left label lists are labels.
        (
            "sum by (queue_name) (x_total) / on (queue_name) group_left (name, hostname) y_info",
            ["x_total", "y_info"],
        ),
        ("x_total * on () group_right count(z)", ["x_total", "z"]),
        ('sum without (instance) (x_total) > bool ignoring (job) y{a!="b"}', ["x_total", 'y{a!="b"}']),
        # offset and @ change when a selector reads, not what: one selector, reported without them.
        ("x_total unless x_total offset 10m", ["x_total"]),
        ("rate(x_total[5m] @ 1700000000 offset -1m)", ["x_total"]),
        # Subqueries: the selector inside the inner expression.
        ('max_over_time(rate(c_total{a="b"}[1m])[5m:30s] offset 2m)', ['c_total{a="b"}']),
        ("min_over_time((sum(a) / sum(b))[10m:])", ["a", "b"]),
        # Label names that look like metric names are still label names.
        (
            'sum by (celery_worker_up) (rate(http_requests_total{celery_task_failed_total="x"}[5m]))',
            ['http_requests_total{celery_task_failed_total="x"}'],
        ),
        ('count_values("celery_worker_up", foo) and topk(3, bar) or quantile(0.9, baz)', ["foo", "bar", "baz"]),
        # Recording-rule names with colons are metrics.
        (
            "queue_name:celery_task_failure_ratio:rate5m > 0.1 and on (queue_name) absent(celery_worker_up == 1)",
            ["queue_name:celery_task_failure_ratio:rate5m", "celery_worker_up"],
        ),
        # Unary minus, parentheses, number-only sides, time functions: no selector from those.
        ("-(a) + 1e3 * time() - scalar(b) or vector(1)", ["a", "b"]),
        ("vector(0)", []),
        # Matchers only, the metric named by __name__ (or by a regex over it).
        ('{__name__=~"locust_.+", job="locust"}', ['{__name__=~"locust_.+", job="locust"}']),
    ],
)
def test_selectors_are_what_the_expression_reads(expr: str, expected: list[str]) -> None:
    assert found(expr) == expected


def test_grafana_variables_are_substituted_before_parsing() -> None:
    expr = 'sum(rate(m_total{queue_name=~"$queue", name=~"${task}", hostname=~"$worker"}[$__rate_interval]))'
    (sel,) = selectors(expr)
    assert sel == Selector("m_total", (("queue_name", "=~", ".*"), ("name", "=~", ".*"), ("hostname", "=~", ".*")))


def test_a_selector_keeps_its_matchers_and_prints_as_valid_promql() -> None:
    (sel,) = selectors(r'{__name__="m", a="x\"y\\z", b!~"c|d", e!=""}')
    assert sel.metric is None and sel.name == "m"
    assert ("a", "=", 'x"y\\z') in sel.matchers and ("b", "!~", "c|d") in sel.matchers
    # What the check sends to Prometheus' series API parses back to the same selector.
    assert selectors(str(sel)) == [sel]


def test_a_regex_over_the_name_names_no_metric() -> None:
    (sel,) = selectors('{__name__=~"celery_.+"}')
    assert sel.metric is None and sel.name is None


def test_or_matchers_are_kept() -> None:
    (sel,) = selectors('m{a="b" or c="d"}')
    assert sel.metric == "m" and sel.or_matchers == ((("a", "=", "b"),), (("c", "=", "d"),))
    assert str(sel) == 'm{a="b" or c="d"}'


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(celery_task_succeeded_total[5m]) by",  # the live test's parse-error canary
        "rate(x[5m]",
        'm{a=~"("}',  # an invalid regex
        "label_values(m, x)",  # Grafana's, not PromQL
        "sum(m) by (a) by (b)",
    ],
)
def test_an_expression_that_does_not_parse_raises(expr: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the parser's messages are its own
        selectors(expr)


def test_a_variable_reads_the_selector_of_its_label_values() -> None:
    var = Item("variable", "x / $task", 'label_values(celery_task_sent_total{queue_name=~"$queue"}, name)')
    assert [str(s) for s in item_selectors(var)] == [f"celery_task_sent_total{{queue_name{ALL}}}"]
    assert item_selectors(Item("variable", "x / $all", "label_values(hostname)")) == []
    with pytest.raises(ValueError, match="not a label_values"):
        item_selectors(Item("variable", "x / $bad", "query_result(up)"))


def test_every_dashboard_and_rule_expression_parses_and_reads_a_selector() -> None:
    items = collect_items()
    assert {"panel", "annotation", "variable", "record", "alert"} == {i.kind for i in items}
    for item in items:
        assert item_selectors(item), item.where


def test_every_or_vector_0_target_has_its_metric_selectors_found() -> None:
    # The issue: these targets answer 0 whatever they name, so only their selectors can show a misspelling.
    fallback = [i for i in collect_items() if i.kind == "panel" and "or vector(0)" in i.expr]
    assert len(fallback) >= 14
    for item in fallback:
        names = {s.metric for s in item_selectors(item)}
        assert names and None not in names, item.where
        assert all(name in item.expr for name in names)


def test_a_misspelled_metric_inside_or_vector_0_is_a_selector_of_its_own() -> None:
    expr = 'sum(rate(celery_task_faild_total{queue_name=~"$queue"}[$__rate_interval])) or vector(0)'
    assert found(expr) == [f"celery_task_faild_total{{queue_name{ALL}}}"]


def test_empty_ok_declarations_name_metrics_their_target_reads_and_say_why() -> None:
    declared = empty_ok_declarations()
    by_where = {i.where: i for i in collect_items() if i.kind == "panel"}
    for (dashboard, panel, ref), metrics in declared.items():
        item = by_where[f"{dashboard} / {panel} / {ref}"]
        assert item.empty_ok == metrics
        read = {s.name for s in item_selectors(item)}
        for metric, reason in metrics.items():
            assert metric in read, f"{item.where} declares {metric} empty_ok but does not read it"
            assert len(reason.split()) >= 4, f"{item.where}: say why {metric} may be empty"
    # Rare: only what a healthy run truly leaves empty.
    assert sum(len(m) for m in declared.values()) <= 3, declared


def test_empty_ok_reaches_the_check_item_and_stays_out_of_the_grafana_json(monkeypatch) -> None:
    reason = "no such series on a healthy run, for this test"

    def spec() -> DashboardSpec:
        targets = [Target("sum(a_total)", "a"), Target("sum(b_total) or vector(0)", "b", {"b_total": reason})]
        panel = PanelSpec("Declared", "A panel whose second target declares b_total.", "short", targets)
        return DashboardSpec("t", "Test", "A dashboard for this test.", [("Row", [panel])], ["test"])

    monkeypatch.setattr("dashboards.build.DASHBOARDS", {"t": spec})
    data = build(spec())
    assert reason not in json.dumps(data) and "empty_ok" not in json.dumps(data)
    assert list(errors(data)) == []
    items = {i.where: i for i in collect_items({"t": data}) if i.kind == "panel"}
    assert items["Test / Declared / A"].empty_ok == {}
    assert items["Test / Declared / B"].empty_ok == {"b_total": reason}


def test_a_copy_of_a_panel_item_keeps_its_declaration() -> None:
    # The check's load step re-creates items as Item(kind, where, expr) to evaluate them while Locust runs;
    # the declaration belongs to the panel definition, so the copy must still carry it.
    (item,) = [i for i in collect_items() if i.where == "Load test / Failures by endpoint / A"]
    assert "locust_failures_total" in item.empty_ok
    assert declared_empty_ok(Item(item.kind, item.where, item.expr)) == item.empty_ok
    # Only panels have definitions to declare in; an item's own declaration is kept beside them.
    assert declared_empty_ok(Item("alert", item.where, item.expr)) == {}
    assert declared_empty_ok(Item("panel", "x / y / A", "m", empty_ok={"m": "why"})) == {"m": "why"}
