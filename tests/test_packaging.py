"""Who installs what: pyproject.toml's dependency split, uv.lock, and the Dockerfile's two images.

celery-lab is an application run from its checkout (installed editable into .venv), not a wheel. Its
[project] dependencies are the reference app's runtime, what the Dockerfile's `app` image installs; the lab's
tools are the `lab` dependency group (the `tools` image), tests and linters the `dev` group. There is no Docker
engine here, so the Dockerfile is read statically, and what an image would install is resolved from uv.lock
with `uv export` and the image's own `uv sync` flags. No network, no processes but uv.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
UV = Path(sys.executable).parent / "uv"

RUNTIME = {
    "celery",
    "kombu",
    "redis",
    "fastapi",
    "uvicorn",
    "pydantic",
    "pydantic-settings",
    "structlog",
    "sqlalchemy",
    "aiosqlite",
    "psycopg",
    "httpx",
    "prometheus-client",
    "email-validator",  # sign-up's address validation (app/schemas/api.py)
}
LAB = {
    "typer",
    "rich",
    "psutil",
    "flower",
    "aiosmtpd",
    "locust",
    "grafana-foundation-sdk",
    "numpy",
    "scipy",
    "matplotlib",
    "pyyaml",
    "jsonschema",
    "junitparser",
    "promql-parser",
}
# What the reference app's image must not carry: the lab's tools and what they pull in.
NOT_IN_APP = {
    "locust",
    "matplotlib",
    "scipy",
    "numpy",
    "grafana-foundation-sdk",
    "typer",
    "rich",
    "flower",
    "aiosmtpd",
    "gevent",
}
DEV_TOOLS = {"pytest", "hypothesis", "schemathesis", "pytest-celery", "ruff", "import-linter", "grimp", "uv"}
DEV_TOOLS |= {"xmlschema", "pytest-xdist"}
# uv sync/export options that choose groups and extras, i.e. what gets installed.
SELECTION_FLAGS = {"--no-default-groups", "--all-groups", "--dev", "--no-dev", "--only-dev", "--all-extras"}
SELECTION_OPTIONS = {"--group", "--no-group", "--only-group", "--extra", "--no-extra"}


def norm(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    assert match, spec
    return norm(match.group(0))


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


# --- the Dockerfile, parsed ---------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_stages(text: str | None = None) -> dict[str, Stage]:
    """The Dockerfile's stages in order, by name (unnamed stages by index), with their instructions."""
    text = DOCKERFILE.read_text() if text is None else text
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    stages: dict[str, Stage] = {}
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages[name] = Stage(name, words[0])
        else:
            assert stages, f"{keyword} before the first FROM"
            list(stages.values())[-1].instructions.append((keyword, args))
    return stages


def copy_from(args: str) -> tuple[str | None, list[str], str]:
    """A COPY's --from stage (None: the build context), its sources and its destination."""
    words = shlex.split(args)
    options = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    source = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
    return source, paths[:-1], paths[-1]


def closure(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The stages a target is built from: its own, its FROM chain and every COPY --from, recursively."""
    assert target in stages, f"the Dockerfile has no stage {target!r}"
    seen: dict[str, Stage] = {}

    def visit(name: str) -> None:
        if name in seen or name not in stages:
            return  # an image from a registry, not a stage
        stage = stages[name]
        seen[name] = stage
        visit(stage.base)
        for args in stage.args("COPY"):
            source, _, _ = copy_from(args)
            if source is not None:
                visit(source)

    visit(target)
    return list(seen.values())


def commands(stage: Stage) -> list[list[str]]:
    """Every shell command of a stage's RUN instructions, split on && and ;."""
    out = []
    for args in stage.args("RUN"):
        words = shlex.split(args)
        cmd: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", ";", "||"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def uv_syncs(stages: dict[str, Stage], target: str) -> list[list[str]]:
    """The options of every `uv sync` a target's image is built with."""
    return [cmd[2:] for stage in closure(stages, target) for cmd in commands(stage) if cmd[:2] == ["uv", "sync"]]


def selection(options: list[str]) -> list[str]:
    """The options of a uv sync that choose what it installs (groups, extras)."""
    out = []
    for i, opt in enumerate(options):
        name, _, value = opt.partition("=")
        if name in SELECTION_FLAGS:
            out.append(opt)
        elif name in SELECTION_OPTIONS:
            out += [name, value or options[i + 1]]
    return out


def context_sources(stages: dict[str, Stage], target: str) -> set[str]:
    """What a target copies from the build context (top-level paths)."""
    return {
        src.removeprefix("./").strip("/").split("/")[0]
        for stage in closure(stages, target)
        for args in stage.args("COPY") + stage.args("ADD")
        for src in copy_from(args)[1]
        if copy_from(args)[0] is None
    }


def exported(options: list[str]) -> set[str]:
    """The distributions a `uv sync` with these selection options installs, resolved from uv.lock."""
    assert UV.exists(), f"{UV} missing: uv is pinned in the dev group (scripts/bootstrap.sh installs it)"
    argv = [str(UV), "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate", "--no-emit-project"]
    out = subprocess.run([*argv, *options], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    names = {requirement_name(line) for line in out.stdout.splitlines() if line and not line.startswith(("#", " "))}
    assert names, out.stdout
    return names


# --- pyproject.toml and the lock -----------------------------------------------------------------------------
def test_dependencies_are_the_apps_runtime_and_the_groups_the_rest(pyproject: dict[str, Any]):
    project = pyproject["project"]
    assert {requirement_name(d) for d in project["dependencies"]} == RUNTIME
    groups = pyproject["dependency-groups"]
    assert set(groups) == {"lab", "dev"}
    assert {requirement_name(d) for d in groups["lab"]} == LAB
    dev = {requirement_name(d): d for d in groups["dev"]}
    assert {"import-linter", "grimp", "pytest", "ruff", "uv"} <= set(dev)
    assert dev["import-linter"].replace(" ", "") == "import-linter>=2.17"
    assert "grafana-foundation-sdk==1769699379!11.6.0" in groups["lab"], "keep the SDK's exact epoch pin"
    # A checkout's `uv sync --frozen` (scripts/bootstrap.sh) installs everything.
    assert set(pyproject["tool"]["uv"]["default-groups"]) == {"lab", "dev"}
    assert project["scripts"] == {"lab": "lab.cli:main"}


def test_every_top_level_package_is_in_the_editable_install(pyproject: dict[str, Any]):
    listed = set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    assert {"app", "lab", "chaos", "dashboards", "loadtests"} <= packages
    assert packages <= listed, f"list {sorted(packages - listed)} in [tool.hatch.build.targets.wheel] packages"


def test_lock_records_the_same_split(lock: dict[str, Any]):
    (project,) = [p for p in lock["package"] if p["name"] == "celery-lab"]
    assert project["source"] == {"editable": "."}
    assert {norm(d["name"]) for d in project["dependencies"]} == RUNTIME
    assert {norm(d["name"]) for d in project["dev-dependencies"]["lab"]} == LAB
    assert {"import-linter", "grimp"} <= {norm(d["name"]) for d in project["dev-dependencies"]["dev"]}


def test_uv_is_pinned_once():
    (lock_uv,) = [p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"] if p["name"] == "uv"]
    bootstrap = re.search(r"^UV_VERSION=(\S+)$", (ROOT / "scripts/bootstrap.sh").read_text(), re.M)
    assert bootstrap
    assert bootstrap.group(1) == lock_uv
    assert re.findall(r"\buv==(\S+)", DOCKERFILE.read_text()) == [lock_uv]


# --- the images ----------------------------------------------------------------------------------------------
def test_dockerfile_parser_reads_stages_copies_and_syncs():
    stages = dockerfile_stages(
        "# c\nFROM python:3.12-slim AS a\nRUN uv sync --locked \\\n    --group lab && echo\n"
        "FROM python:3.12-slim AS b\nCOPY --from=a /x /x\nCOPY app ./app\nFROM b AS c\n"
    )
    assert list(stages) == ["a", "b", "c"]
    assert [s.name for s in closure(stages, "c")] == ["c", "b", "a"]
    assert uv_syncs(stages, "c") == [["--locked", "--group", "lab"]]
    assert selection(["--locked", "--group=lab", "--no-default-groups"]) == ["--group", "lab", "--no-default-groups"]
    assert context_sources(stages, "c") == {"app"}


def test_app_image_installs_the_runtime_only():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "app", "a build without --target (pytest-celery's worker image) must get `app`"
    syncs = uv_syncs(stages, "app")
    assert syncs, "the app image installs nothing with uv sync"
    for options in syncs:
        assert "--locked" in options
        assert "--no-install-project" in options, "an application from its source tree, not a wheel"
        assert selection(options) == ["--no-default-groups"], f"the app image installs more than the runtime: {options}"
    # No other installer brings anything else in: pip installs uv alone.
    for stage in closure(stages, "app"):
        for cmd in commands(stage):
            if "pip" in cmd and "install" in cmd:
                assert [w for w in cmd[cmd.index("install") + 1 :] if not w.startswith("-")] == ["uv==0.13.9"], cmd
    assert context_sources(stages, "app") == {"pyproject.toml", "uv.lock", "app"}


def test_tools_image_adds_the_lab_group_and_lab():
    stages = dockerfile_stages()
    syncs = uv_syncs(stages, "tools")
    assert syncs
    for options in syncs:
        assert "--locked" in options
        assert "--no-install-project" in options
        assert sorted(selection(options)) == sorted(["--no-default-groups", "--group", "lab"]), options
    assert context_sources(stages, "tools") == {"pyproject.toml", "uv.lock", "app", "lab"}


def test_what_the_app_image_installs():
    options = [selection(o) for o in uv_syncs(dockerfile_stages(), "app")]
    names = set().union(*(exported(o) for o in options))
    assert {"celery", "fastapi", "redis", "kombu", "uvicorn", "sqlalchemy", "psycopg"} <= names
    assert not names & NOT_IN_APP, f"the app image would install {sorted(names & NOT_IN_APP)}"
    assert not names & DEV_TOOLS
    # The same set as the literal runtime-only export.
    assert names == exported(["--no-default-groups"])


def test_what_the_tools_image_installs():
    options = [selection(o) for o in uv_syncs(dockerfile_stages(), "tools")]
    names = set().union(*(exported(o) for o in options))
    assert {"celery", "flower", "aiosmtpd", "prometheus-client", "uvicorn"} <= names
    # Locust itself requires pytest (its pytest plugin); the rest of the dev group stays out.
    assert not names & (DEV_TOOLS - {"pytest"})


def imports_at_runtime(tree: ast.AST) -> set[str]:
    """Top-level modules a file imports, leaving out `if TYPE_CHECKING:` blocks and relative imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def module_file(module: str) -> Path | None:
    """The repository file a dotted module name is, or None (third-party, or a name inside a module)."""
    base = ROOT.joinpath(*module.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def load_time_imports(tree: ast.AST) -> set[str]:
    """Dotted names a module imports when it is imported: not inside functions, not under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_closure(modules: set[str]) -> set[str]:
    """Every dotted name imported, transitively through the repository's modules, when these are imported."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c imports a and a.b
        path = module_file(module)
        if path is not None:
            todo += load_time_imports(ast.parse(path.read_text(), str(path)))
    return seen


def test_import_closure_follows_load_time_imports_only():
    closure_ = import_closure({"lab.exporter"})
    assert {"lab", "lab.exporter", "app.core.metrics", "celery", "prometheus_client"} <= closure_
    assert "dashboards.ledger_metrics" not in closure_, "imported inside main(), only with --ledger-url"


def test_the_app_image_holds_everything_app_imports():
    """app/ imports only the stdlib, itself, and distributions the app image installs: it runs there alone."""
    installed = exported(["--no-default-groups"])
    providers = {module: {norm(d) for d in dists} for module, dists in packages_distributions().items()}
    first_party = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    for path in sorted((ROOT / "app").rglob("*.py")):
        for module in sorted(imports_at_runtime(ast.parse(path.read_text(), str(path)))):
            if module in sys.stdlib_module_names or module in ("__future__", "app"):
                continue
            where = path.relative_to(ROOT)
            assert module not in first_party, f"{where} imports {module}: the app image holds app/ alone"
            assert module in providers, f"{where} imports {module}, which no installed distribution provides"
            assert providers[module] & installed, f"{where} imports {module}, which the app image lacks"
