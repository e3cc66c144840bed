"""pytest-celery's fixtures on local processes (tests.plugins.pytest_celery_local); LAB_CELERY_NODES=docker for Docker.

Imported, not listed in ``pytest_plugins``: pytest accepts that only in the rootdir's conftest. Fixtures
defined here take precedence over the pytest-celery plugin's for the tests in this directory.
"""

import pytest

from tests.plugins.pytest_celery_local import *  # noqa: F403


@pytest.fixture
def celery_local_stack_config() -> dict[str, object]:  # overrides the plugin's default (imported above)
    # The workflow tasks these tests send need no SMTP sink or AI stub; 2 pool processes start faster than 4.
    return {"smtp": False, "ai_stub": False, "overrides": {"CELERY_WORKER_CONCURRENCY": "2"}}
