"""The CI templates users copy (examples/ci): each parses, and every `lab` command in it exists with every
option it uses, read from the CLI itself (click's parameters), so a renamed option breaks this test, not a
user's pipeline."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from lab.cli import app
from lab.profiles import ROOT

TEMPLATES = sorted((ROOT / "examples" / "ci").glob("*.yml"))


def shell_lines(node: Any) -> list[str]:
    """Every shell string of a workflow (GitHub `run:`) or a job (GitLab `script:`/`before_script:`)."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key in ("run", "script", "before_script") and isinstance(value, str | list):
                found += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
            else:
                found += shell_lines(value)
        return found
    if isinstance(node, list):
        return [line for item in node for line in shell_lines(item)]
    return []


def lab_commands(path: Path) -> list[list[str]]:
    doc = yaml.safe_load(path.read_text())
    commands = []
    for text in shell_lines(doc):
        for line in text.replace(";", "\n").splitlines():
            words = shlex.split(line.strip(), comments=True)
            while words and words[0] in ("then", "else", "do", "&&"):  # inside an if/for: the command after it
                words = words[1:]
            if words and words[0] == "$LAB":
                commands.append(words[1:])
    return commands


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The (typer-vendored click) command a `lab` argument list reaches (``lab bench A B`` is ``lab bench run
    A B``)."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    while hasattr(command, "commands") and words and not words[0].startswith("-"):
        name = words[0] if words[0] in command.commands else "run"
        assert name in command.commands, f"lab {' '.join(path)} has no command {words[0]!r}"
        command, path = command.commands[name], [*path, name]
        words = words[1:] if name == words[0] else words
    return command, path


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_every_lab_command_exists_with_its_options(template: Path) -> None:
    commands = lab_commands(template)
    verbs = {" ".join(resolve(words)[1]) for words in commands}
    assert verbs >= {"audit", "chaos suite", "bench run", "bench compare"}, verbs
    for words in commands:
        command, path = resolve(words)
        known = {opt for p in command.params for opt in p.opts + p.secondary_opts}
        used = {w.split("=", 1)[0] for w in words if w.startswith("--")}
        assert used <= known, f"lab {' '.join(path)}: {sorted(used - known)} unknown (it has {sorted(known)})"
        assert "--junit" in used or path == ["bench", "run"], f"lab {' '.join(path)} should write JUnit for CI"


def test_the_resolver_catches_an_unknown_option() -> None:
    command, path = resolve(["chaos", "suite", "--app", "x:y"])
    assert path == ["chaos", "suite"] and "--no-such" not in {o for p in command.params for o in p.opts}
