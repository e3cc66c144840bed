"""Application settings: one pydantic-settings class, one UPPER_CASE env var per field.

Field names are the env var names in lower case, so ``CELERY_WORKER_PREFETCH_MULTIPLIER`` sets
``celery_worker_prefetch_multiplier``. Config profiles (``configs/*.toml``) are nothing but sets of these env
vars, so a profile, a shell export and a compose ``environment:`` entry speak the same vocabulary.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Pool = Literal["prefork", "threads", "solo"]
NonNegFloat = Annotated[float, Field(ge=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
    )

    # --- Connections -------------------------------------------------------------------------------------
    celery_broker_url: str = Field(
        "redis://localhost:6379/0",
        description="Broker URL: redis:// or amqp:// (RabbitMQ; the lab runs either, `--broker rabbitmq`). "
        "The result backend and the cache stay on Redis",
    )
    celery_result_backend: str = Field("redis://localhost:6379/1", description="Result backend URL")
    # Progress keys, workflow child lists and task timelines. The guide's ``app.core.cache``.
    cache_url: str = Field(
        "redis://localhost:6379/2", description="Redis for progress keys, workflow member lists and task timelines"
    )
    database_url: str = Field(
        "sqlite:///./data/app.db", description="SQLAlchemy URL (SQLite locally, postgresql+psycopg:// in compose)"
    )
    smtp_host: str = Field("localhost", description="SMTP server the email tasks send through")
    smtp_port: int = Field(1025, ge=1, le=65535, description="SMTP port")
    smtp_from: str = Field("noreply@example.com", description="Sender address")
    smtp_timeout_s: float = Field(10.0, gt=0, description="SMTP connect/send timeout, seconds")
    ai_base_url: str = Field(
        "http://localhost:8081", description="OpenAI-compatible API base URL (the lab's stub locally)"
    )
    ai_api_key: str = Field("lab-stub-key", description="Bearer token for the AI API")
    ai_model: str = Field("lab-stub-1", description="Model name sent to the AI API")
    ai_timeout_s: float = Field(30.0, gt=0, description="AI request timeout, seconds")
    export_dir: Path = Field(Path("./data/exports"), description="Where export files are written")
    report_dir: Path = Field(Path("./data/reports"), description="Where daily reports are written")

    # --- Celery knobs the lab varies (defaults are the guide's) -------------------------------------------
    celery_task_acks_late: bool = Field(True, description="Ack after the task ran (redelivery if the worker dies)")
    celery_task_reject_on_worker_lost: bool = Field(
        True, description="Requeue a task whose pool process died (with acks_late)"
    )
    celery_worker_prefetch_multiplier: int = Field(
        1, ge=0, description="Messages reserved per pool process (0 = unlimited)"
    )
    celery_worker_concurrency: int = Field(4, ge=1, le=256, description="Pool processes/threads per worker")
    celery_worker_pool: Pool = Field("prefork", description="Pool: prefork, threads or solo")
    celery_task_time_limit: NonNegFloat = Field(3600, description="Hard time limit, seconds (0 = none)")
    celery_task_soft_time_limit: NonNegFloat = Field(3000, description="Soft time limit, seconds (0 = none)")
    celery_result_expires: int = Field(86400, ge=0, description="Seconds results (and timelines) are kept")
    celery_task_default_retry_delay: NonNegFloat = Field(
        60, description="Base retry countdown, seconds (email backoff is this x (retries+1))"
    )
    celery_task_max_retries: int = Field(3, ge=0, description="Retries before a task fails")
    celery_task_ignore_result: bool = Field(False, description="Do not store results")
    # Redis transport: an unacked message comes back only after this long (kombu's default is one hour).
    celery_visibility_timeout: int = Field(
        4200, ge=1, description="Redis: seconds before an unacked message is redelivered (above the 1 h time limit)"
    )
    # kombu: how often the worker sweeps for unacked messages older than the visibility timeout, and on
    # which sweep it really scans (period ~ interval * throttle).
    celery_unacked_restore_interval: int = Field(
        10, ge=1, description="kombu: seconds between sweeps for expired unacked messages"
    )
    celery_redis_transport: Literal["lab", "kombu"] = Field(
        "lab",
        description="Redis broker transport: `lab` (app/core/broker.py: poison items quarantined, reliable fetch) "
        "or `kombu`, stock kombu, to compare against (a poison item stops its workers; no reliable fetch)",
    )
    celery_broker_reliable_fetch: bool = Field(
        True,
        description="Redis broker: fetch with BLMOVE into a per-consumer inflight list (app/core/broker.py), so a "
        "worker killed mid-fetch loses nothing; false is kombu's BRPOP, which can lose that message",
    )
    celery_unacked_restore_throttle: int = Field(
        10, ge=1, description="kombu: sweeps per real scan (period ~ interval x throttle)"
    )
    celery_worker_soft_shutdown_timeout: NonNegFloat = Field(
        0.0, description="Seconds a warm shutdown waits for running tasks before requeueing them"
    )
    # Celery's default. True cancels running acks_late tasks when the broker connection drops; measured here
    # (chaos/experiments/broker-crash-aof-reference.json) it loses tasks when the result backend is down too.
    celery_worker_cancel_long_running_tasks_on_connection_loss: bool = Field(
        False, description="Cancel running acks_late tasks when the broker connection is lost"
    )
    celery_worker_send_task_events: bool = Field(
        True, description="Workers send task events (the metrics exporter and Flower need them)"
    )
    celery_task_send_sent_event: bool = Field(True, description="Publishers send task-sent events")

    # --- Task-specific knobs -----------------------------------------------------------------------------
    # The guide hard-codes 30 s for AI retries; kept as the default, exposed so tests need not wait.
    ai_retry_countdown: NonNegFloat = Field(30, description="Retry countdown for AI calls, seconds (the guide's 30)")
    ai_soft_time_limit: NonNegFloat = Field(300, description="Soft time limit of process_ai_completion, seconds")
    # Export steps really do I/O; a delay per step lets people (and tests) see PROGRESS on small data.
    export_step_delay_s: NonNegFloat = Field(
        0.0, description="Pause after each export step, seconds (to watch PROGRESS)"
    )
    # The API commits a new user just after the broker took its welcome email, so the task can start first;
    # it waits this long for the row, then skips: a row that never appears was rolled back (the sign-up
    # answered 503) and a retry sends its own email.
    welcome_email_signup_wait_s: NonNegFloat = Field(
        10.0, description="Seconds a welcome email waits for its sign-up's user row to be committed before skipping"
    )
    # cleanup_expired_data deletes exports and reports older than this.
    data_retention_s: int = Field(
        86400, ge=0, description="cleanup_expired_data removes exports and reports older than this"
    )

    # --- API ---------------------------------------------------------------------------------------------
    # "executor": publish from a small dedicated thread pool, with a deadline, so a stalled broker stalls
    # only dispatches (answered 503) and never /health. "inline": the guide's way, .delay() on the event loop.
    api_dispatch_mode: Literal["executor", "inline"] = Field(
        "executor",
        description="executor (thread pool with a deadline) or inline (the guide's .delay() on the event loop)",
    )
    api_dispatch_threads: int = Field(4, ge=1, le=64, description="Threads publishing tasks in executor mode")
    api_dispatch_timeout_s: float = Field(
        5.0, gt=0, description="Seconds before a dispatch answers 503 when the broker stalls"
    )
    # A canvas publishes one message per signature (a 1,000-item chord: 1,001, plus their sent events), which
    # takes longer than one task even on a healthy broker; a flat deadline answered 503 for a chord that was
    # in fact published and ran. The deadline grows by this much for each task after the first.
    api_dispatch_timeout_per_task_s: NonNegFloat = Field(
        0.02,
        description="Seconds added to the dispatch deadline for each task after the first that a canvas "
        "publishes (a 1,000-item chord: +20 s)",
    )
    api_idempotency_ttl_s: int = Field(
        86400, ge=1, description="Seconds the answer to a request with an Idempotency-Key is kept for its retries"
    )
    api_health_timeout_s: float = Field(0.8, gt=0, description="Time budget of /health, seconds")
    api_max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body the API reads; a larger one is a 413 before it is read"
    )

    # --- Logging -----------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto (JSON off a TTY, console on one), json or console"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("celery_broker_url", "celery_result_backend", "cache_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "amqp://", "pyamqp://", "unix://")):
            raise ValueError("expected a URL like redis://HOST:PORT/DB")
        return value

    @classmethod
    def env_names(cls) -> list[str]:
        return [name.upper() for name in cls.model_fields]

    def as_env(self) -> dict[str, str]:
        """The env vars that reproduce these settings in a child process."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return env


# What Celery itself reads from the environment (and its worker sets for its pool children): never a typo.
CELERY_OWN_ENV = frozenset(
    {
        "CELERY_BENCH", "CELERY_BENCH_EVERY", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL",
        "CELERY_CONFIG_MODULE", "CELERY_CUSTOM_WORKER_POOL", "CELERY_DB_REUSE_MAX", "CELERY_INCLUDE",
        "CELERY_LOADER", "CELERY_LOG_FILE", "CELERY_LOG_LEVEL", "CELERY_LOG_REDIRECT", "CELERY_LOG_REDIRECT_LEVEL",
        "CELERY_RDBSIG", "CELERY_RDB_HOST", "CELERY_RDB_PORT", "CELERY_SKIP_CHECKS", "CELERY_TRACE_APP",
    }
)  # fmt: skip
SETTING_PREFIXES = ("CELERY_", "API_")


def env_typos(
    environ: Mapping[str, str], prefixes: Iterable[str] = SETTING_PREFIXES, also_known: Iterable[str] = ()
) -> list[str]:
    """One warning per variable that looks like a setting but is ignored: an unknown name with a settings
    prefix (a typo: ``CELERY_WORKR_CONCURRENCY``), or a setting's name without its prefix
    (``WORKER_CONCURRENCY``). A profile rejects such typos; the environment cannot (it holds everything else
    too), so it says "did you mean" instead."""
    prefixes = tuple(prefixes)
    settings = set(Settings.env_names())
    known = settings | CELERY_OWN_ENV | set(also_known)
    out = []
    for raw in sorted(environ):
        name = raw.upper()
        if name in known:
            continue
        if name.startswith(prefixes):
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else " (app/core/config.py lists the settings)"
            out.append(f"{raw} is not a setting and is ignored{hint}")
        elif "_" in name and (full := next((p + name for p in prefixes if p + name in settings), None)):
            out.append(f"{raw} is ignored; did you mean {full}?")
    return out


class SettingsError(ValueError):
    """A setting has a value it cannot take. ``str()`` is one line naming the env var."""


def describe_error(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name}={value!r} is invalid: {msg}")
    return "; ".join(parts)


def settings_from(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from an env mapping (default: os.environ), raising SettingsError with one line."""
    try:
        if env is None:
            return Settings(**overrides)
        known = set(Settings.model_fields)
        values: dict[str, Any] = {k.lower(): v for k, v in env.items() if k.lower() in known}
        values.update(overrides)
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None


@lru_cache
def get_settings() -> Settings:
    for warning in env_typos(os.environ):
        print(f"configuration warning: {warning}", file=sys.stderr)
    try:
        return settings_from()
    except SettingsError as exc:
        # Processes (worker, API, beat) import this at start-up: one line and exit 2, not a traceback.
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
