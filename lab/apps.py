"""The Celery app the lab drives: the reference app (``app/``) by default, or a user's, named ``MODULE:ATTR``.

``lab ... --app billing.celery:app --app-path ~/src/billing`` points a Stack at a user's project. Its workers
run ``celery -A billing.celery:app worker --include lab.probes`` with ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` set to the lab's servers: Celery reads those (as ``celery -b``/``--result-backend``
do) before the app's own settings, so the user's broker and backend are replaced for the run
(``AppTarget.describe`` says so in every journal) and their code is not touched. A profile for a user's app
is a TOML file of Celery setting names (``task_acks_late = false``), laid over the app's configuration in the
workers (``lab.appshim``) and in the lab's own client.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from celery import Celery
from celery.app.defaults import NAMESPACES, flatten

from lab.errors import LabError

REFERENCE_APP = "app.core.celery:celery_app"
REFERENCE_WORKER_APP = "app.core.celery"  # what ``celery -A`` is given for the reference app (its PEP 562 app)
APP_ENV, APP_PATH_ENV, APP_CONF_ENV = "LAB_APP", "LAB_APP_PATH", "LAB_APP_CONF"
SHIM_APP = "lab.appshim:app"
DEFAULT_VISIBILITY_TIMEOUT = 3600  # kombu's Redis transport, when the app does not set one


class AppInputError(LabError, ValueError):
    """What the lab was pointed at is not a Celery app it can use. ``str()`` says which and why."""


def import_object(spec: str, app_path: Path | None = None, example: str = REFERENCE_APP) -> object:
    """``MODULE:ATTR`` imported from the user's project (``app_path`` put on ``sys.path`` first).
    AppInputError, one line, for a spec that is malformed or does not import."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppInputError(f"{spec!r} is not MODULE:ATTR (e.g. {example})")
    if app_path is not None:
        if not app_path.is_dir():
            raise AppInputError(f"--app-path {app_path}: no such directory (give your project's root)")
        if str(app_path.resolve()) not in sys.path:
            sys.path.insert(0, str(app_path.resolve()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # anything the user's module raises while importing is bad input here
        raise AppInputError(f"module {module_name!r} does not import: {type(exc).__name__}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppInputError(f"{module_name!r} has no attribute {attr!r}") from None
        except Exception as exc:  # a lazy attribute (PEP 562) that fails to build
            raise AppInputError(f"{spec}: building it failed: {type(exc).__name__}: {exc}") from None
    return obj


def load_app(spec: str, app_path: Path | None = None, overlay: Mapping[str, Any] | None = None) -> Celery:
    """Import ``MODULE:ATTR`` without starting anything, lay ``overlay`` over its settings, and finalize it so
    its tasks show (and bind with the overlaid settings: a task reads ``task_acks_late`` when it binds)."""
    obj = import_object(spec, app_path)
    if not isinstance(obj, Celery):
        raise AppInputError(f"{spec} is a {type(obj).__name__}, not a Celery app")
    if overlay:
        obj.conf.update(overlay)
    try:
        # The modules named by `include`/`imports`, so `app.tasks` lists the app's own tasks; no broker touched.
        obj.loader.import_default_modules()
        obj.finalize(auto=True)
    except Exception as exc:
        raise AppInputError(f"{spec}: importing its task modules failed: {type(exc).__name__}: {exc}") from None
    return obj


@cache
def celery_setting_names() -> frozenset[str]:
    """Every setting name Celery knows (``task_acks_late``, ``broker_transport_options``, ...)."""
    return frozenset(key for key, _ in flatten(NAMESPACES))


def load_overlay(path: Path) -> dict[str, Any]:
    """A profile for a user's app: a TOML file of Celery settings (plus an optional ``description``)."""
    if not path.is_file():
        raise AppInputError(f"profile {path}: no such file (with --app a profile is a TOML file of Celery settings)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AppInputError(f"{path}: not valid TOML: {exc}") from None
    known = celery_setting_names()
    overlay = {}
    for key, value in data.items():
        if key == "description":
            continue
        if key not in known:
            hint = difflib.get_close_matches(key.lower(), known, n=1)
            raise AppInputError(
                f"{path}: {key!r} is not a Celery setting" + (f" (did you mean {hint[0]}?)" if hint else "")
                + "; with --app a profile holds Celery's own setting names, lower case"
            )  # fmt: skip
        overlay[key] = value
    return overlay


def pin_urls(client: Celery, broker_url: str, backend_url: str) -> Celery:
    """Make ``client`` use these URLs even when this process's environment has CELERY_BROKER_URL or
    CELERY_RESULT_BACKEND (Celery reads those before any setting; a user's CI often exports them)."""
    client.conf.update(broker_url=broker_url, broker_read_url=broker_url, broker_write_url=broker_url)
    client.conf.result_backend = backend_url
    client.backend_cls = backend_url  # type: ignore[assignment]  # by_url() takes a URL: beats the env variable
    return client


@dataclass
class AppTarget:
    """Which Celery app a Stack runs, where its project lives, and the settings a profile lays over it."""

    spec: str = REFERENCE_APP
    path: Path | None = None
    overlay: dict[str, Any] = field(default_factory=dict)
    overlay_source: str | None = None

    @classmethod
    def from_options(
        cls,
        spec: str | None,
        path: Path | None = None,
        profile: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> AppTarget:
        """From ``--app``/``--app-path`` (or LAB_APP/LAB_APP_PATH) and, for a user's app, ``--profile`` FILE.
        Imports the app once here, so bad input fails before anything starts."""
        spec = spec or environ.get(APP_ENV) or REFERENCE_APP
        raw_path = path or (Path(environ[APP_PATH_ENV]) if environ.get(APP_PATH_ENV) else None)
        target = cls(spec, raw_path.resolve() if raw_path else None)
        if target.reference:
            return target
        if profile:
            target.overlay, target.overlay_source = load_overlay(Path(profile)), str(profile)
        target.load()
        return target

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AppTarget:
        """The target a Stack member was started for, from the env the Stack gave it (``env()``)."""
        spec = environ.get(APP_ENV)
        if not spec:
            raise AppInputError(f"{APP_ENV} is not set: this process is started by the lab's Stack, with the app named")
        path = Path(environ[APP_PATH_ENV]) if environ.get(APP_PATH_ENV) else None
        return cls(spec, path, json.loads(environ.get(APP_CONF_ENV) or "{}"))

    @property
    def reference(self) -> bool:
        return self.spec in (REFERENCE_APP, "app.core.celery")

    def with_overlay(self, extra: Mapping[str, Any], source: str | None = None) -> AppTarget:
        """This target with more settings laid over its profile (a matrix fault's own, e.g. a soft shutdown)."""
        if not extra and source is None:
            return self
        return replace(self, overlay={**self.overlay, **extra}, overlay_source=source or self.overlay_source)

    @property
    def key(self) -> str:
        """Equal for targets whose workers run the same code with the same settings (they can share a Stack)."""
        return json.dumps([self.spec, str(self.path), self.overlay], sort_keys=True, default=str)

    def load(self) -> Celery:
        """The app itself, imported in this process (the user's module runs once per process)."""
        return load_app(self.spec, self.path)

    def tasks(self) -> list[str]:
        return sorted(name for name in self.load().tasks if not name.startswith("celery."))

    def require_task(self, name: str) -> None:
        """Raise AppInputError unless the app registers a task ``name`` (a bench workload, a chaos probe)."""
        if self.reference:
            return
        if name not in self.load().tasks:
            hint = difflib.get_close_matches(name, self.tasks(), n=1)
            raise AppInputError(
                f"task {name!r} is not registered in {self.spec}"
                + (f" (did you mean {hint[0]}?)" if hint else f"; its tasks: {', '.join(self.tasks()) or 'none'}")
            )

    @property
    def worker_app(self) -> str:
        """What ``celery -A`` is given: the app itself, or the shim that lays a profile over it first."""
        if self.reference:
            return REFERENCE_WORKER_APP
        return SHIM_APP if self.overlay else self.spec

    def env(self) -> dict[str, str]:
        """What a worker needs, beyond the broker URLs, to find and configure a user's app."""
        if self.reference:
            return {}
        env = {APP_ENV: self.spec, APP_CONF_ENV: json.dumps(self.overlay)}
        if self.path is not None:
            env[APP_PATH_ENV] = str(self.path)
        return env

    def client(self, broker_url: str, backend_url: str) -> Celery:
        """A client with the app's own configuration (queues, routes, serializers) and the profile, on the
        lab's broker and backend: what chaos and bench publish with, so messages go where the app's would."""
        source = self.load()
        conf = dict(source.conf.table(with_defaults=False, censored=False))
        conf.update(self.overlay)
        client = Celery(source.main, set_as_current=False)
        client.conf.update(conf)
        return pin_urls(client, broker_url, backend_url)

    def settings(self, conf: Any) -> dict[str, Any]:
        """The settings a journal reports, read from a client's configuration (``conf``) as Celery sees it."""
        options = dict(conf.broker_transport_options or {})
        return {
            "pool": str(conf.worker_pool or "prefork"),
            "concurrency": int(conf.worker_concurrency or os.cpu_count() or 1),
            "acks_late": bool(conf.task_acks_late),
            "reject_on_worker_lost": bool(conf.task_reject_on_worker_lost),
            "prefetch_multiplier": int(conf.worker_prefetch_multiplier),
            "visibility_timeout_s": float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)),
            "ignore_result": bool(conf.task_ignore_result),
            "task_events": bool(conf.worker_send_task_events),
        }

    def describe(self) -> dict[str, Any]:
        """For journals: which app ran, and what the lab changed in it."""
        return {
            "app": self.spec,
            "app_path": str(self.path) if self.path else None,
            "reference": self.reference,
            "profile": self.overlay_source,
            "overlay": self.overlay,
            # A user's broker and backend settings never reach the lab's servers: Celery's env variables win.
            "overridden": [] if self.reference else ["broker_url", "result_backend"],
        }


def app_from_env(environ: Mapping[str, str]) -> Celery:
    """The worker side of a profile overlay (``lab.appshim``): the user's app with LAB_APP_CONF laid over it."""
    target = AppTarget.from_env(environ)
    return load_app(target.spec, target.path, target.overlay)
