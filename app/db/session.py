"""SQLAlchemy 2 engines: a sync session for Celery tasks, an async one for FastAPI.

SQLite is the local default. Several worker processes write to it at once, so connections use WAL and a
busy timeout; without them concurrent tasks fail with "database is locked".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import get_settings
from app.db.models import Base


def async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def sync_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _prepare(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


@lru_cache
def sync_engine() -> Engine:
    url = sync_url(get_settings().database_url)
    engine = create_engine(url, **_prepare(url))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@lru_cache
def async_engine() -> AsyncEngine:
    url = async_url(get_settings().database_url)
    engine = create_async_engine(url, **_prepare(url))
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def sync_session_maker() -> Session:
    """A new sync session (the guide's name); use as ``with sync_session_maker() as session``."""
    return sessionmaker(sync_engine(), expire_on_commit=False)()


@lru_cache
def _async_sessions() -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(async_engine(), expire_on_commit=False)


async def get_async_session() -> AsyncIterator[AsyncSession]:
    async with _async_sessions()() as session:
        yield session


def init_db() -> None:
    """Create tables. Several processes (API, workers) may run this at once at start-up."""
    engine = sync_engine()
    if engine.dialect.name == "postgresql":
        # Concurrent CREATE TABLEs collide in PostgreSQL's catalog; a transaction-scoped lock serialises them.
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(7270001)"))
            Base.metadata.create_all(conn)
        return
    try:
        Base.metadata.create_all(engine)
    except OperationalError as exc:  # SQLite: losing the race to create a table is fine
        if "already exists" not in str(exc):
            raise


def reset_after_fork() -> None:
    # A forked pool child must not reuse the parent's pooled connections.
    if sync_engine.cache_info().currsize:
        sync_engine().dispose(close=False)
