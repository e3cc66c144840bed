"""Command-line options every verb that can drive a user's Celery app shares (``--app``, ``--app-path``,
``--task``/``--args``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lab.apps import APP_ENV, APP_PATH_ENV, REFERENCE_APP

AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar=APP_ENV,
        help=f"Your Celery app, MODULE:ATTR (e.g. billing.celery:app); default the reference app ({REFERENCE_APP}). "
        "The lab runs it on its own broker and backend (your broker_url/result_backend are overridden for the run).",
        show_default=False,
    ),
]
AppPathOpt = Annotated[
    Path | None,
    typer.Option(
        "--app-path",
        envvar=APP_PATH_ENV,
        help="Your project's root: put on sys.path and the workers' PYTHONPATH so --app imports.",
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option("--task", help="A task of the app (its registered name) for the lab to send; see --args."),
]
ArgsOpt = Annotated[
    str | None,
    typer.Option(
        "--args",
        help='The task\'s arguments as JSON: a list (positional) or an object (keyword); "{id}" in a string '
        'becomes a fresh id per call, "{index}" its number.',
    ),
]
