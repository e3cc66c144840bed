"""The Docker side of tests.plugins.pytest_celery_local, as far as it can be checked without a Docker engine."""

from __future__ import annotations

import pytest

from app.core.config import Settings, settings_from
from lab.commands import PY, celery_worker_argv
from lab.procs import StackError
from tests.plugins.pytest_celery_local import LabWorkerContainer, docker_nodes

CLUSTERS = {
    "celery_broker_cluster_config": {"urls": ["redis://redis-abc/0"], "host_urls": ["redis://localhost:1234/0"]},
    "celery_backend_cluster_config": {"urls": ["redis://redis-def/0"], "host_urls": ["redis://localhost:1235/0"]},
}


def test_worker_container_runs_the_stacks_worker_command():
    argv = celery_worker_argv("lab_worker@%h", "prefork", 4)
    assert argv[0] == PY
    assert LabWorkerContainer.command() == ["python", *argv[1:], "-Q", "celery"]


def test_worker_container_env_is_settings_on_the_container_network():
    env = LabWorkerContainer.lab_env(CLUSTERS)
    assert set(env) - {"PYTHONUNBUFFERED"} <= set(Settings.env_names())
    settings = settings_from(env)
    # In-network addresses ("urls"), not the host's published ports ("host_urls").
    assert settings.celery_broker_url == "redis://redis-abc/0"
    assert settings.celery_result_backend == "redis://redis-def/0"
    assert settings.cache_url == "redis://redis-abc/2"
    with pytest.raises(StackError, match="broker and a result backend"):
        LabWorkerContainer.lab_env({"celery_broker_cluster_config": CLUSTERS["celery_broker_cluster_config"]})


def test_node_mode_is_local_unless_docker_is_asked_for(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LAB_CELERY_NODES", raising=False)
    assert docker_nodes() is False
    monkeypatch.setenv("LAB_CELERY_NODES", "Docker")
    assert docker_nodes() is True
    monkeypatch.setenv("LAB_CELERY_NODES", "k8s")
    with pytest.raises(StackError, match="LAB_CELERY_NODES='k8s' is invalid"):
        docker_nodes()
