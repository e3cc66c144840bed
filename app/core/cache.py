"""The small Redis cache the guide's export task writes progress to (``cache_set``)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis

from app.core.config import get_settings


@lru_cache
def redis_client(url: str) -> redis.Redis:
    """One client (one connection pool) per URL per process.

    redis-py's pool notices a fork and reconnects, so this is safe in prefork pool children."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def get_redis() -> redis.Redis:
    """The cache of this process' settings (CACHE_URL)."""
    return redis_client(get_settings().cache_url)


def cache_set(key: str, value: Any, ttl: int) -> None:
    get_redis().set(key, json.dumps(value), ex=ttl)


def cache_get(key: str) -> Any | None:
    raw = get_redis().get(key)
    return None if raw is None else json.loads(raw)
