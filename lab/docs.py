"""Generated documentation: the README's configuration table comes from Settings, so it cannot drift.

``python -m lab.docs`` rewrites the table in README.md; tests/lab/test_docs.py fails when it is stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from app.core.config import Settings
from lab.profiles import ROOT

START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def config_table() -> str:
    rows = ["| Env var | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        rows.append(f"| `{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


def render_readme(text: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {START} ... {END} section")
    return pattern.sub(lambda _: f"{START}\n{config_table()}\n{END}", text)


def main() -> None:
    readme = Path(ROOT / "README.md")
    readme.write_text(render_readme(readme.read_text()))


if __name__ == "__main__":
    main()
