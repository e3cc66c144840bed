"""The lab's consoles and the one way a command turns a known failure into one line and an exit code.

``console`` (stderr) carries progress, tables meant for people and errors; ``out`` (stdout) carries what a
script may read (``--json``, listings). Every verb runs its body inside ``user_errors()``.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from lab.errors import LabError

console = Console(stderr=True)
out = Console()

EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` and return the exit-2 exception for the caller to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_INPUT)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn any ``LabError`` into one line and exit 2; make Ctrl-C, SIGTERM and SIGHUP unwind (exit 130) so
    everything the command started is stopped by its context managers.

    SIGINT gets its handler explicitly: a non-interactive shell starts background jobs (``lab up &``) with
    SIGINT ignored, Python keeps that disposition, and Ctrl-C or ``kill -INT`` would then do nothing."""

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _terminate, signal.SIGHUP: _terminate}
    previous = {s: signal.signal(s, handler) for s, handler in wanted.items()}
    try:
        yield
    except LabError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the lab started has been stopped[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def write_json(path: Path | None, data: Any) -> None:
    """``--json PATH``: write ``data`` there; a path that cannot be written is bad input (exit 2)."""
    if path is None:
        return
    try:
        path.write_text(json.dumps(data, indent=2, default=str))
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc}") from None


def check_outputs(**paths: Path | None) -> None:
    """Make the directories of output options (``json_path=...``, ``junit=...``), as pytest's ``--junitxml``
    does (a CI step writes ``results/x.xml`` into a fresh checkout), and refuse one that cannot be made,
    before a command starts anything: a run of minutes must not end in "cannot write"."""
    for option, path in paths.items():
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            flag = "--" + option.removesuffix("_path").replace("_", "-")
            raise LabError(f"{flag} {path}: cannot make its directory {path.parent} ({exc.strerror})") from None
