"""Each check on apps built to trip it, and on the reference app and the guide's configuration as written."""

from __future__ import annotations

import pytest

import lab.probes  # noqa: F401  (as in the lab's CLI: its shared tasks join every app finalized after)
from audit.checks import FAIL, PASS, WARN, audit, own_tasks
from lab.apps import AppInputError, load_app
from tests.audit.apps import bad


def not_passing(app) -> dict[str, str]:
    return {f.id: f.status for f in audit(app) if f.status != PASS}


def test_a_well_configured_app_passes_everything() -> None:
    assert not_passing(load_app("tests.audit.apps.bad:good")) == {}


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("pickle", {"serializers": FAIL}),
        ("acks_early", {"acks-late": FAIL}),
        ("no_reject", {"reject-on-worker-lost": FAIL}),
        ("short_visibility", {"visibility-timeout": FAIL}),
        ("default_visibility", {"visibility-timeout": WARN}),
        ("prefetch", {"prefetch": WARN}),
        ("soft_shutdown", {"soft-shutdown": WARN}),
        ("soft_after_hard", {"time-limits": FAIL}),
        ("no_expiry", {"result-expires": WARN}),
        ("ignored", {"ignored-settings": WARN}),
        ("beat_dict", {"beat-schedule": FAIL}),
        ("retry_unbound", {"task-bind:bad.retry_unbound": FAIL}),
        ("backoff", {"task-backoff:bad.no_backoff": WARN}),
        ("early_task", {"task-acks-late:bad.early": WARN}),
        ("implicit", {"worker_cancel_long_running_tasks_on_connection_loss": WARN}),
        ("from_object", {"ignored-settings": WARN}),  # seen in a config_from_object layer too
    ],
)
def test_each_hazard_is_caught_by_its_own_check_and_no_other(attr: str, expected: dict[str, str]) -> None:
    assert not_passing(load_app(f"tests.audit.apps.bad:{attr}")) == expected


def test_every_hazard_finding_names_its_fix_and_the_matrix_cells_are_well_formed() -> None:
    for attr in ("acks_early", "no_reject", "short_visibility", "default_visibility", "prefetch"):
        for f in audit(getattr(bad, attr)):
            if f.status != PASS:
                assert f.fix
                assert f.evidence is None or len(f.evidence.split("/")) == 3


def test_the_reference_app_has_no_fail() -> None:
    findings = audit(load_app("app.core.celery:celery_app"))
    assert [f.id for f in findings if f.status == FAIL] == []


def test_the_guides_configuration_as_written() -> None:
    found = not_passing(load_app("tests.audit.apps.guide_app:celery_app"))
    assert found["beat-schedule"] == FAIL  # its daily entry is a plain dict
    assert found["ignored-settings"] == WARN  # task_default_retry_delay, task_max_retries are Task attributes
    # kombu's 1 h default, and no longer than the guide's own 1 h time limit: a fail, saying it is the default
    assert found["visibility-timeout"] == FAIL
    by_id = {f.id: f for f in audit(load_app("tests.audit.apps.guide_app:celery_app"))}
    assert "kombu's default" in by_id["visibility-timeout"].found
    ignored = by_id["ignored-settings"]
    assert "task_default_retry_delay" in ignored.found and "task_max_retries" in ignored.found


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no.such.module:app", "does not import"),
        ("tests.audit.apps.bad:nothing", "has no attribute"),
        ("tests.audit.apps.bad:GOOD", "not a Celery app"),
        ("tests.audit.apps.bad", "not MODULE:ATTR"),
    ],
)
def test_bad_input_says_what_is_wrong(spec: str, needle: str) -> None:
    with pytest.raises(AppInputError, match=needle):
        load_app(spec)


def test_the_labs_own_probe_tasks_are_not_audited_as_the_apps() -> None:
    tasks = {t.name for t in own_tasks(load_app("tests.audit.apps.bad:good"))}
    assert not any(name.startswith("lab.probes") for name in tasks)
