"""The layering contract (.importlinter, docs/architecture.md) holds, can fail, and the tree has no import cycle."""

from __future__ import annotations

import graphlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from lab.profiles import ROOT

PACKAGES = ("app", "lab", "chaos", "dashboards", "loadtests", "bench", "audit", "orchestration")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_contracts_hold() -> None:
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def _scratch_copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / ".importlinter", tree)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.yml"))
    return tree


@pytest.mark.parametrize(
    ("module", "bad_import", "expected"),
    [
        ("lab/procs.py", "import chaos.runner", "lab.procs -> chaos.runner"),  # the core up into a use
        ("bench/runner.py", "import chaos.faults", "bench.runner -> chaos.faults"),  # one use into another
        ("app/core/cache.py", "import lab.stack", "app.core.cache -> lab.stack"),  # the app into the lab
        ("chaos/report.py", "import orchestration.demo", "chaos.report -> orchestration.demo"),  # a use upwards
    ],
)
def test_a_bad_import_is_caught(tmp_path: Path, module: str, bad_import: str, expected: str) -> None:
    tree = _scratch_copy(tmp_path)
    assert lint(tree).returncode == 0  # the copy itself is clean
    path = tree / module
    # Inside a function, as a lazy import to dodge a cycle would be: it still counts.
    path.write_text(path.read_text() + f"\n\ndef _scratch() -> None:\n    {bad_import}  # noqa\n")
    res = lint(tree)
    assert res.returncode != 0, res.stdout
    assert "BROKEN" in res.stdout
    assert expected in res.stdout, res.stdout


def test_no_import_cycle_anywhere() -> None:
    # grimp reads every import statement, function-level ones included.
    graph = grimp.build_graph(*PACKAGES)
    sorter = graphlib.TopologicalSorter(
        {m: graph.find_modules_directly_imported_by(m) for m in graph.modules if m.split(".")[0] in PACKAGES}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_import_placed_below_code_to_dodge_a_cycle() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "noqa: E402" in line
    ]
    assert not found
