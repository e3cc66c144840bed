"""Settings: env strings round-trip or fail with one line that names the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.config import Settings, SettingsError, env_typos, settings_from
from lab.profiles import ROOT, ProfileError, load_profile, merge_env


@pytest.mark.parametrize(
    ("name", "value", "accepts"),
    [
        ("CELERY_WORKER_PREFETCH_MULTIPLIER", "abc", "valid integer"),
        ("CELERY_WORKER_CONCURRENCY", "0", "greater than or equal to 1"),
        ("CELERY_WORKER_POOL", "gevent2", "'prefork', 'threads' or 'solo'"),
        ("CELERY_TASK_ACKS_LATE", "maybe", "valid boolean"),
        ("CELERY_BROKER_URL", "http://x", "redis://HOST:PORT/DB"),
        ("SMTP_PORT", "70000", "less than or equal to 65535"),
    ],
)
def test_bad_value_names_variable_and_what_it_accepts(name: str, value: str, accepts: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from({name: value})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={value!r}")
    assert accepts in message


def run_with_bad_env(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CELERY_WORKER_PREFETCH_MULTIPLIER": "abc"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)


def assert_exit_2_naming_the_variable(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "CELERY_WORKER_PREFETCH_MULTIPLIER" in lines[0]


def test_process_exits_2_with_one_line() -> None:
    assert_exit_2_naming_the_variable(run_with_bad_env("from app.core.config import get_settings; get_settings()"))


def test_importing_the_config_module_reads_no_settings() -> None:
    """Tools that only need Settings or settings_from (the lab, docs) import the module whatever the env says."""
    proc = run_with_bad_env("import app.core.config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_importing_the_celery_module_builds_no_app() -> None:
    """The lab imports create_celery_app and build_config whatever the env says; only using the app reads it."""
    code = (
        "import app.core.celery as m; from app.core.celery import build_config, create_celery_app; "
        "assert m._app is None, 'an app was built at import'"
    )
    proc = run_with_bad_env(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_first_use_of_the_celery_app_exits_2_with_one_line() -> None:
    assert_exit_2_naming_the_variable(run_with_bad_env("import app.core.celery as m; m.celery_app"))
    assert_exit_2_naming_the_variable(run_with_bad_env("from app.core.celery import celery_app"))


def test_celery_cli_finds_the_one_lazily_built_app() -> None:
    """``celery -A app.core.celery`` resolves through find_app (module.app first): the same app the tasks use."""
    code = (
        "import app.core.celery as m; from celery.app.utils import find_app; "
        "found = find_app('app.core.celery'); import app.tasks.email as e; "
        "assert found is m.celery_app is m.app is m.celery is e.send_welcome_email.app, found; "
        "assert type(found).__name__ == 'ReferenceCelery'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


@given(
    prefetch=st.integers(0, 10_000),
    concurrency=st.integers(1, 256),
    acks_late=st.booleans(),
    pool=st.sampled_from(["prefork", "threads", "solo"]),
    delay=st.floats(0, 1e6, allow_nan=False),
)
def test_settings_round_trip_through_env(
    prefetch: int, concurrency: int, acks_late: bool, pool: str, delay: float
) -> None:
    first = settings_from(
        {},
        celery_worker_prefetch_multiplier=prefetch,
        celery_worker_concurrency=concurrency,
        celery_task_acks_late=acks_late,
        celery_worker_pool=pool,
        celery_task_default_retry_delay=delay,
    )
    assert settings_from(first.as_env()) == first


@given(st.text(max_size=12))
def test_int_setting_parses_or_fails_cleanly(raw: str) -> None:
    try:
        value = settings_from({"CELERY_WORKER_PREFETCH_MULTIPLIER": raw}).celery_worker_prefetch_multiplier
    except SettingsError as exc:
        assert str(exc).startswith("CELERY_WORKER_PREFETCH_MULTIPLIER=")
    else:  # pydantic's lax int: digits, underscores, whitespace, a zero fraction ("0.0")
        assert value >= 0
        assert value == float(raw.strip().replace("_", ""))


def test_profiles_use_settings_names_and_env_wins() -> None:
    ref = load_profile("reference")
    assert set(ref) <= set(Settings.env_names())
    merged = merge_env(ref, {"CELERY_WORKER_CONCURRENCY": "2", "HOME": "/x"}, {"SMTP_PORT": "2525"})
    assert merged["CELERY_WORKER_CONCURRENCY"] == "2"
    assert merged["SMTP_PORT"] == "2525"
    assert "HOME" not in merged


def test_reference_profile_is_the_guides_settings() -> None:
    s = settings_from(load_profile("reference"))
    assert (s.celery_task_acks_late, s.celery_task_reject_on_worker_lost) == (True, True)
    assert (s.celery_task_time_limit, s.celery_task_soft_time_limit) == (3600, 3000)
    assert (s.celery_worker_prefetch_multiplier, s.celery_worker_concurrency) == (1, 4)
    assert (s.celery_result_expires, s.celery_task_default_retry_delay, s.celery_task_max_retries) == (86400, 60, 3)


def test_unknown_profile_and_unknown_key(tmp_path) -> None:
    with pytest.raises(ProfileError, match="not found: choose one of"):
        load_profile("nosuch")
    bad = tmp_path / "bad.toml"
    bad.write_text("CELERY_WORKER_PREFETCH_MULTIPLER = 4\n")
    with pytest.raises(ProfileError, match="did you mean CELERY_WORKER_PREFETCH_MULTIPLIER"):
        load_profile(str(bad))


def test_env_typos_names_lookalikes_and_leaves_the_rest_alone() -> None:
    warnings = env_typos(
        {
            "CELERY_WORKR_CONCURRENCY": "2",
            "WORKER_CONCURRENCY": "2",
            "API_DISPATCH_TIMEOUT": "1",
            "CELERY_BROKER_URL": "redis://x",  # a setting
            "celery_worker_concurrency": "2",  # a setting, in the case Settings also accepts
            "CELERY_LOG_LEVEL": "INFO",  # Celery's own
            "PATH": "/bin",
            "PORT": "80",  # one word: too common to be a missing prefix
        }
    )
    assert warnings == [
        "API_DISPATCH_TIMEOUT is not a setting and is ignored; did you mean API_DISPATCH_TIMEOUT_S?",
        "CELERY_WORKR_CONCURRENCY is not a setting and is ignored; did you mean CELERY_WORKER_CONCURRENCY?",
        "WORKER_CONCURRENCY is ignored; did you mean CELERY_WORKER_CONCURRENCY?",
    ]
