from __future__ import annotations

from app.core.config import Settings
from lab.docs import render_readme
from lab.profiles import ROOT


def test_readme_configuration_table_is_generated_from_settings() -> None:
    text = (ROOT / "README.md").read_text()
    assert render_readme(text) == text, "README's configuration table is stale: run `.venv/bin/python -m lab.docs`"
    for name in Settings.env_names():
        assert f"`{name}`" in text


def test_makefile_and_ci_agree_with_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "exec make test"
