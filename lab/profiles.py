"""Config profiles: TOML files under ``configs/`` that set Settings' env vars.

A profile holds env var names (as in the README's configuration table) and values, e.g.
``CELERY_WORKER_PREFETCH_MULTIPLIER = 4``. Precedence, lowest first: Settings' defaults, the profile, the
caller's environment, then what the Stack itself must set (ports, data dirs).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path

from app.core.config import SETTING_PREFIXES, Settings, SettingsError, env_typos, settings_from
from lab.console import console
from lab.errors import ProfileError, SettingsInvalid

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
# Every LAB_* variable the lab or its children read (the run dir, the chaos ledger, Locust's plugin options).
LAB_ENV = frozenset(
    {
        "LAB_RESULTS_DIR",
        "LAB_LEDGER_URL",
        "LAB_LOAD_SCENARIO",
        "LAB_LOAD_LEDGER",
        "LAB_LOAD_PROMETHEUS_PORT",
        "LAB_LOAD_PROMETHEUS_BIND",
        "LAB_CELERY_NODES",  # the pytest-celery plugin's node kind (tests/plugins)
    }
)
_warned: set[str] = set()


def warn_env_typos(environ: Mapping[str, str]) -> list[str]:
    """Say once per process, on stderr, which variables look like the lab's or the app's but are ignored."""
    fresh = [w for w in env_typos(environ, (*SETTING_PREFIXES, "LAB_"), LAB_ENV) if w not in _warned]
    for warning in fresh:
        _warned.add(warning)
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    return fresh


def list_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _env_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_profile(name_or_path: str) -> dict[str, str]:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ProfileError(
            f"config profile {name_or_path!r} not found: choose one of {', '.join(list_profiles())} "
            f"or give a path to a .toml file"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    known = Settings.env_names()
    out: dict[str, str] = {}
    for key, value in data.items():
        if key == "description":
            continue
        name = key.upper()
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            raise ProfileError(f"{path}: unknown setting {key!r}" + (f" (did you mean {hint[0]}?)" if hint else ""))
        if isinstance(value, (dict, list)):
            raise ProfileError(f"{path}: {key} must be a plain value, not a table or list")
        out[name] = _env_value(value)
    return out


def profile_description(name: str) -> str:
    path = CONFIG_DIR / f"{name}.toml"
    return str(tomllib.loads(path.read_text()).get("description", "")) if path.is_file() else ""


def merge_env(profile: Mapping[str, str], environ: Mapping[str, str], forced: Mapping[str, str]) -> dict[str, str]:
    known = set(Settings.env_names())
    merged = dict(profile)
    merged.update({k: v for k, v in environ.items() if k in known})
    merged.update(forced)
    return merged


def resolve(profile: str, environ: Mapping[str, str], forced: Mapping[str, str]) -> Settings:
    """The validated Settings a Stack's processes will run with. Raises SettingsInvalid/ProfileError."""
    try:
        return settings_from(merge_env(load_profile(profile), environ, forced))
    except SettingsError as exc:
        raise SettingsInvalid(str(exc)) from None
