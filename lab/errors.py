"""The errors a user of the lab can cause or fix: one base, so the CLI turns any of them into one line and exit 2.

Every error the lab raises for bad input or a bad environment derives from ``LabError``, and its ``str()``
says what is wrong and how to fix it. Anything else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class LabError(Exception):
    """Bad input or environment; ``str()`` is one line naming what is wrong and how to fix it."""


class StackError(LabError, RuntimeError):
    """Something the lab started (or wanted to start) is not right."""


class ProfileError(LabError, ValueError):
    """A config profile (or a setting given on the command line) is unknown or invalid."""


class SettingsInvalid(LabError, ValueError):
    """The app's Settings refused a value (``app.core.config.SettingsError``, re-raised inside the lab)."""


class BrokerUnreadable(LabError):
    """The broker could not be read: a third answer, never to be taken for "quiet" or "empty"."""
