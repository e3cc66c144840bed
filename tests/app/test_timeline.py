"""Timelines are written where the task's app's Settings say, not where the process env says."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.core.celery import create_celery_app
from app.core.config import Settings, settings_from
from app.core.timeline import read_timeline, timeline_key
from lab.procs import Proc, start_redis_server, wait_until
from lab.profiles import ROOT

APP_CACHE_DB, ENV_CACHE_DB = 5, 2
APP_EXPIRES = 7777  # the env keeps the default 86400


@pytest.fixture
def redis_base(tmp_path: Path) -> Iterator[str]:
    proc, port = start_redis_server("redis", tmp_path / "redis", tmp_path / "redis.log")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.stop(timeout=5)


def env_settings(base: str, tmp_path: Path) -> Settings:
    return settings_from(
        {},
        celery_broker_url=f"{base}/0",
        celery_result_backend=f"{base}/1",
        cache_url=f"{base}/{ENV_CACHE_DB}",
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        log_format="json",
    )


@pytest.mark.usefixtures("no_leftovers")
def test_worker_writes_the_timeline_to_its_apps_cache_not_the_envs(redis_base: str, tmp_path: Path) -> None:
    process_env = env_settings(redis_base, tmp_path)
    app_settings = settings_from(
        process_env.as_env(), cache_url=f"{redis_base}/{APP_CACHE_DB}", celery_result_expires=APP_EXPIRES
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env |= process_env.as_env()
    env |= {
        "TIMELINE_TEST_CACHE_URL": app_settings.cache_url,
        "TIMELINE_TEST_RESULT_EXPIRES": str(APP_EXPIRES),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    hostname = f"timeline{os.getpid()}@test"
    argv = [sys.executable, "-m", "celery", "-A", "tests.app.timeline_app", "worker", "-n", hostname]
    argv += ["--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"]
    worker = Proc("worker", argv, env, tmp_path / "worker.log", cwd=ROOT).start()
    client = create_celery_app(app_settings, set_as_current=False)
    app_cache = redis.Redis.from_url(app_settings.cache_url)
    env_cache = redis.Redis.from_url(process_env.cache_url)
    try:
        wait_until(
            lambda: client.control.ping(destination=[hostname], timeout=0.5),
            timeout=60,
            what=f"worker {hostname}",
            abort=worker.died,
            interval=0.2,
        )
        result = client.send_task("app.tasks.workflows.process_item", args=[7])
        assert result.get(timeout=60) == 49
        # The timeline is written before the result is stored, so it is there now or never.
        timeline = read_timeline(result.id, app_cache)
        assert timeline is not None, "no timeline in the app's cache"
        assert (timeline["name"], timeline["state"], timeline["attempt"]) == (
            "app.tasks.workflows.process_item",
            "SUCCESS",
            1,
        )
        assert read_timeline(result.id, env_cache) is None, "the timeline went to the env's CACHE_URL"
        assert APP_EXPIRES - 120 < app_cache.ttl(timeline_key(result.id)) <= APP_EXPIRES
    finally:
        client.close()
        app_cache.close()
        env_cache.close()
        worker.stop(timeout=15)
