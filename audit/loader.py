"""Import a Celery app named ``MODULE:ATTR`` without starting anything, and finalize it so its tasks show."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from celery import Celery

from lab.errors import LabError


class AuditInputError(LabError):
    """What ``lab audit`` was pointed at is not a Celery app it can read. ``str()`` says which and why."""


def load_app(spec: str, app_path: Path | None = None) -> Celery:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AuditInputError(f"{spec!r} is not MODULE:ATTR (e.g. app.core.celery:celery_app)")
    if app_path is not None:
        sys.path.insert(0, str(app_path))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # anything the user's module raises while importing is bad input here
        raise AuditInputError(f"module {module_name!r} does not import: {type(exc).__name__}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AuditInputError(f"{module_name!r} has no attribute {attr!r}") from None
        except Exception as exc:  # a lazy attribute (PEP 562) that fails to build
            raise AuditInputError(f"{spec}: building it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, Celery):
        raise AuditInputError(f"{spec} is a {type(obj).__name__}, not a Celery app")
    try:
        # The modules named by `include`/`imports`, so `app.tasks` lists the app's own tasks; no broker touched.
        obj.loader.import_default_modules()
        obj.finalize(auto=True)
    except Exception as exc:
        raise AuditInputError(f"{spec}: importing its task modules failed: {type(exc).__name__}: {exc}") from None
    return obj
