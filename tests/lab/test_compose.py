"""compose.yaml, the Dockerfile and the systemd units run what the local Stack runs, and keep secrets out.

There is no Docker engine here to start them, so these checks read the files: every service's command is the
Stack's command line (lab/stack.py builds both), env names are Settings names, ports agree across commands,
URLs, healthchecks, published ports and Prometheus targets, and each service runs on the image that holds its
code (the reference system on `app`, the lab's helpers on `tools`; tests/test_packaging.py checks what those
install). No processes are started.
"""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.core.config import Settings, settings_from
from lab.commands import (
    PY,
    ai_stub_argv,
    api_argv,
    beat_argv,
    exporter_argv,
    flower_argv,
    init_db_argv,
    smtp_sink_argv,
)
from lab.profiles import ROOT
from lab.prometheus import new_series_hold
from lab.stack import Stack, StackConfig
from tests.test_packaging import (
    Stage,
    context_sources,
    dockerfile_stages,
    exported,
    import_closure,
    load_time_imports,
    norm,
    selection,
    uv_syncs,
)

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SECRETS = {"REDIS_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "GRAFANA_ADMIN_PASSWORD"}
PUBLISHED = {"api", "flower", "grafana"}
# The Dockerfile's targets and the image each is tagged as.
IMAGES = {"app": "celery-lab/app:latest", "tools": "celery-lab/tools:latest"}
TOOLS_SERVICES = {"flower", "exporter", "smtp", "ai"}
STATE = "/var/lib/celery-lab"
# Ports of third-party images that their commands leave at the default.
IMAGE_PORTS = {"redis": [6379], "postgres": [5432], "prometheus": [9090], "grafana": [3000]}
# Prometheus targets that are not compose services: locust runs only during `lab load`.
ON_DEMAND_TARGETS = {"locust"}

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-") and missing:
            return arg
        if op in (":?", "?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(sub, value)


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    return {k: v for k, v in pairs}


def filled_env(**extra: str) -> dict[str, str]:
    """What a user's .env holds after following .env.example: every required secret filled in."""
    return {**{name: f"test-{name.lower()}" for name in env_example()}, **extra}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw, filled_env())


def services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return doc["services"]


def app_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the Dockerfile (either target)."""
    return {name: svc for name, svc in services(doc).items() if "build" in svc}


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment: (names are checked)"
    return {k: str(v) for k, v in env.items()}


def listen_ports(name: str, svc: dict[str, Any]) -> list[int]:
    """The ports a service listens on, read from its command line (or its image's default)."""
    if name in IMAGE_PORTS:
        return IMAGE_PORTS[name]
    argv = svc.get("command") or []
    ports = [int(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("--port", "--smtp-port", "--http-port")]
    return ports + [int(a.split("=", 1)[1]) for a in argv if a.startswith("--port=")]


def as_container(argv: list[str]) -> list[str]:
    """A Stack command line as the image runs it: the venv's python is on PATH as `python`."""
    assert argv[0] == PY
    return ["python", *argv[1:]]


def stack_for(tmp_path: Path, environ: dict[str, str] | None = None) -> Stack:
    """A configured, never started Stack: its settings and command lines, no processes."""
    return Stack(StackConfig(run_dir=tmp_path, environ=environ or {}))


# --- the checker itself -------------------------------------------------------------------------------------
def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("a$$b ${SET} $SET", env) == "a$b v v"
    assert interpolate("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET:-d}", env) == "d  d d"
    assert interpolate("${SET:?no}", env) == "v"
    with pytest.raises(MissingVariable, match="EMPTY: set it"):
        interpolate("${EMPTY:?set it}", env)
    with pytest.raises(MissingVariable, match="UNSET"):
        interpolate({"k": ["${UNSET?x}"]}, env)


# --- secrets ------------------------------------------------------------------------------------------------
def strings(value: Any) -> list[str]:
    """Every string in a loaded YAML document (keys and values; comments are gone)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_secrets_are_required_variables_never_values(raw: dict[str, Any]):
    text = "\n".join(strings(raw))
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert required == SECRETS
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, name
        for use in uses:
            assert re.fullmatch(r":\?.*\S.*", use), f"${{{name}{use}}}: use ${{{name}:?message}} (required, not empty)"
    # Compose refuses to start without each of them, whatever else is set.
    for name in SECRETS:
        env = filled_env()
        env[name] = ""
        with pytest.raises(MissingVariable, match=name):
            interpolate(raw, env)
    # Every credential-looking value is one of those references, never a literal.
    for name, svc in services(raw).items():
        for key, value in env_of(svc).items():
            if re.search(r"(PASSWORD|SECRET|TOKEN|_KEY|_AUTH)$", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), f"{name}: {key} must come from a required var"
            for url in re.findall(r"\w[\w+]*://\S+", value):
                password = urlsplit(url).password
                assert password is None or password.startswith("${"), f"{name}: {key} has a literal password"


def test_env_example_lists_every_secret_and_holds_none():
    example = env_example()
    assert set(example) == SECRETS
    assert all(value == "" for value in example.values()), ".env.example must not carry secret values"
    optional = re.findall(r"^# ([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M)
    text = "\n".join(strings(yaml.safe_load(COMPOSE.read_text())))
    for name in optional:
        assert "${" + name + ":-" in text, f".env.example documents {name}, which compose.yaml does not read"


# --- commands -----------------------------------------------------------------------------------------------
def test_every_app_service_runs_the_stacks_command_line(compose: dict[str, Any], tmp_path: Path):
    defaults = StackConfig(run_dir=tmp_path)
    scrape = yaml.safe_load((ROOT / "dashboards" / "prometheus" / "prometheus.yml").read_text())["global"]
    compose_hold = new_series_hold(scrape["scrape_interval"])
    expected = {
        "init-db": init_db_argv(),
        "api": api_argv("0.0.0.0", 8000),
        "worker": stack_for(tmp_path).worker_argv("worker@%h"),
        "beat": beat_argv(f"{STATE}/beat/celerybeat-schedule"),
        "flower": flower_argv("0.0.0.0", 5555, f"{STATE}/flower.db"),
        "smtp": smtp_sink_argv("0.0.0.0", 1025, 1080, f"{STATE}/smtp"),
        "ai": ai_stub_argv("0.0.0.0", 8081, defaults.ai_latency, defaults.ai_error_rate),
        "exporter": exporter_argv("0.0.0.0", 9808, new_series_hold_s=compose_hold),
    }
    apps = app_services(compose)
    assert set(apps) == set(expected), "every service built from the Dockerfile needs its Stack command here"
    for name, argv in expected.items():
        assert apps[name]["command"] == as_container(argv), name
        target = apps[name]["build"].get("target")
        assert apps[name]["build"] == {"context": ".", "dockerfile": "Dockerfile", "target": target}, name
        assert apps[name]["image"] == IMAGES.get(target), f"{name}: target {target!r} and image disagree"


def runs_lab_tools(argv: list[str]) -> bool:
    """A command that runs a lab module (python -m lab.*) or Flower (celery ... flower)."""
    modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
    return any(m == "lab" or m.startswith("lab.") for m in modules) or "flower" in argv


def command_modules(argv: list[str]) -> set[str]:
    """The modules a command line imports first: -m/-A modules, uvicorn's loop and http modules, module:attr
    arguments, -c imports, and Flower for `celery ... flower` (a celery subcommand Flower provides)."""
    used: set[str] = set()
    for i, arg in enumerate(argv[:-1]):
        nxt = argv[i + 1]
        if arg in ("-m", "-A") or (arg in ("--loop", "--http") and nxt != "auto"):  # uvicorn's uvloop, httptools
            used.add(nxt)
        elif arg == "-c":
            used |= load_time_imports(ast.parse(nxt))
    used.update(a.split(":")[0] for a in argv if re.fullmatch(r"[\w.]+:\w+", a))
    if "celery" in used and "flower" in argv:
        used.add("flower")
    return used


def image_holds(stages: dict[str, Stage], target: str, argv: list[str]) -> list[str]:
    """What a command imports at load time (transitively through the repository) that the image lacks."""
    first_party = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    tops = {m.split(".")[0] for m in import_closure(command_modules(argv))}
    copied = context_sources(stages, target)
    installed = set().union(*(exported(selection(o)) for o in uv_syncs(stages, target)))
    providers = {module: {norm(d) for d in dists} for module, dists in packages_distributions().items()}
    lacking = sorted(f"{top}/ (not copied)" for top in tops & first_party if top not in copied)
    for top in sorted(tops - first_party - set(sys.stdlib_module_names) - {"__future__"}):
        if not providers.get(top, set()) & installed:
            lacking.append(f"{top} (no installed distribution)")
    return lacking


def test_lab_helpers_run_on_the_tools_image_and_the_app_on_the_app_image(compose: dict[str, Any]):
    stages = dockerfile_stages()
    apps = app_services(compose)
    tools = {name for name, svc in apps.items() if runs_lab_tools(svc["command"])}
    assert tools == TOOLS_SERVICES
    for name, svc in apps.items():
        wanted = "tools" if name in tools else "app"
        assert svc["build"]["target"] == wanted, f"{name} runs {'lab tools' if name in tools else 'the app'}"
        assert svc["image"] == IMAGES[wanted], name
        # The image holds what the command imports as it starts: the code (the app image copies app/ alone)
        # and the distributions (the app image has the runtime only). Imports inside functions are not followed.
        assert {m.split(".")[0] for m in command_modules(svc["command"])} & {"app", "lab"}, name
        lacking = image_holds(stages, wanted, svc["command"])
        assert not lacking, f"{name} imports {lacking}, which the {wanted!r} image lacks"


def test_worker_knobs_are_the_settings_the_stack_reads(raw: dict[str, Any], tmp_path: Path):
    knobs = {"CELERY_WORKER_POOL": "threads", "CELERY_WORKER_CONCURRENCY": "16"}
    worker = services(interpolate(raw, filled_env(**knobs)))["worker"]
    assert worker["command"] == as_container(stack_for(tmp_path, knobs).worker_argv("worker@%h"))
    assert {k: env_of(worker)[k] for k in knobs} == knobs
    assert worker["deploy"]["replicas"] == 2
    assert services(raw)["beat"]["deploy"]["replicas"] == 1


# --- env names and the addresses in them --------------------------------------------------------------------
def test_env_names_are_settings_names(compose: dict[str, Any], tmp_path: Path):
    names = set(Settings.env_names())
    for name, svc in app_services(compose).items():
        unknown = set(env_of(svc)) - names - ({"FLOWER_BASIC_AUTH"} if name == "flower" else set())
        assert not unknown, f"{name}: {sorted(unknown)} are not Settings env vars"
        settings_from(env_of(svc))  # values parse, as they will at the service's start-up

    # What the Stack wires per run (everything it sets away from the defaults), compose wires too.
    local = stack_for(tmp_path).settings
    wired = {name.upper() for name, field in Settings.model_fields.items() if getattr(local, name) != field.default}
    assert {"CELERY_BROKER_URL", "DATABASE_URL", "AI_BASE_URL"} <= wired
    for name in ("init-db", "api", "worker", "beat", "flower"):
        missing = wired - set(env_of(services(compose)[name]))
        assert not missing, f"{name} lacks {sorted(missing)}, which the Stack sets"


def test_env_addresses_point_at_the_services_ports(compose: dict[str, Any], tmp_path: Path):
    svcs = services(compose)
    stack_settings = stack_for(tmp_path).settings
    for name, svc in app_services(compose).items():
        env = env_of(svc)
        for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL"):
            if key in env:
                url, local = urlsplit(env[key]), urlsplit(getattr(stack_settings, key.lower()))
                assert (url.hostname, url.port) == ("redis", 6379), f"{name}: {key}"
                assert url.path == local.path, f"{name}: {key} uses another Redis db than the Stack"
        if "DATABASE_URL" in env:
            db = urlsplit(env["DATABASE_URL"])
            assert (db.scheme, db.hostname, db.port) == ("postgresql+psycopg", "postgres", 5432), name
            assert db.username == env_of(svcs["postgres"])["POSTGRES_USER"]
            assert db.path.lstrip("/") == env_of(svcs["postgres"])["POSTGRES_DB"]
        if "SMTP_HOST" in env:
            assert env["SMTP_HOST"] == "smtp"
            assert int(env["SMTP_PORT"]) == listen_ports("smtp", svcs["smtp"])[0]
        if "AI_BASE_URL" in env:
            ai = urlsplit(env["AI_BASE_URL"])
            assert ai.hostname == "ai"
            assert [ai.port] == listen_ports("ai", svcs["ai"])


# --- ports, health, start order -----------------------------------------------------------------------------
def test_only_api_flower_and_grafana_publish_ports_on_localhost_by_default(compose: dict[str, Any]):
    published = {name for name, svc in services(compose).items() if svc.get("ports")}
    assert published == PUBLISHED
    for name in PUBLISHED:
        svc = services(compose)[name]
        for mapping in svc["ports"]:
            address, host_port, container_port = str(mapping).split(":")
            assert address == "127.0.0.1", f"{name}: publish on PUBLISH_ADDRESS, 127.0.0.1 by default"
            assert int(host_port) > 0
            assert int(container_port) in listen_ports(name, svc), f"{name} publishes a port it does not listen on"
    assert not any(svc.get("expose") or svc.get("network_mode") == "host" for svc in services(compose).values())


def test_healthchecks_and_healthy_dependencies(compose: dict[str, Any]):
    svcs = services(compose)
    one_shot = {name for name, svc in svcs.items() if svc.get("restart") == "no"}
    assert one_shot == {"init-db"}
    for name, svc in svcs.items():
        if name not in one_shot:
            test = (svc.get("healthcheck") or {}).get("test")
            assert test, f"{name} has no healthcheck"
            assert test[0] in ("CMD", "CMD-SHELL"), name
            # An HTTP probe asks the port the service listens on.
            for port in re.findall(r"http://127\.0\.0\.1:(\d+)", " ".join(test)):
                assert int(port) in listen_ports(name, svc), f"{name}'s healthcheck probes port {port}"
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs the long form with a condition"
        for dep, spec in deps.items():
            wanted = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert spec == {"condition": wanted}, f"{name} -> {dep}"
    for name in ("api", "worker", "beat"):
        assert "redis" in svcs[name]["depends_on"], name
    assert {"postgres", "init-db", "smtp", "ai"} <= set(svcs["worker"]["depends_on"])


def test_prometheus_scrapes_the_services_ports(compose: dict[str, Any]):
    svcs = services(compose)
    mounts = dict(m.split(":")[:2] for m in svcs["prometheus"]["volumes"] if m.startswith("./"))
    assert mounts["./dashboards/prometheus"] == "/etc/prometheus"
    config = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    assert all(str(f).startswith("/etc/prometheus/rules/") for f in config["rule_files"])
    assert any((ROOT / "dashboards/prometheus/rules").glob("*.yml"))
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host in ON_DEMAND_TARGETS:
            continue
        assert host in svcs, f"Prometheus scrapes {target}, which is no compose service"
        assert int(port) in listen_ports(host, svcs[host]), f"{target}: {host} does not listen on {port}"


def test_grafana_provisioning_matches_its_mounts(compose: dict[str, Any]):
    svcs = services(compose)
    mounts = {m.split(":")[1]: m.split(":")[0] for m in svcs["grafana"]["volumes"] if m.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == "./dashboards/grafana/provisioning"
    provisioning = ROOT / "dashboards/grafana/provisioning"
    paths = [
        p["options"]["path"]
        for f in sorted((provisioning / "dashboards").glob("*.yml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert paths
    for path in paths:
        assert path in mounts, f"the dashboard provider reads {path}, which compose does not mount"
        assert any((ROOT / mounts[path]).glob("*.json")), f"{mounts[path]} holds no dashboards"
    for f in sorted((provisioning / "datasources").glob("*.yml")):
        for source in yaml.safe_load(f.read_text())["datasources"]:
            url = urlsplit(source["url"])
            assert url.hostname in svcs, f"datasource {source['name']} points at no compose service"
            assert url.port in listen_ports(url.hostname, svcs[url.hostname])


def test_bind_mounts_exist(compose: dict[str, Any]):
    for name, svc in services(compose).items():
        for mount in svc.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    assert (ROOT / "Dockerfile").exists()


# --- the image and the systemd units ------------------------------------------------------------------------
def test_dockerfile_installs_from_the_lock_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    stages = dockerfile_stages()
    bases = {stage.base for stage in stages.values()} - set(stages)
    assert bases == {"python:3.12-slim"}
    for target in IMAGES:
        syncs = uv_syncs(stages, target)
        assert syncs, f"{target} installs nothing from the lock"
        assert all("--locked" in options for options in syncs), target
        # The user the image runs as: the last USER along its FROM chain.
        chain = [*reversed(bases_of(stages, target)), target]
        users = [u for name in chain for u in stages[name].args("USER")]
        assert users, f"{target} sets no USER"
        assert users[-1].split(":")[0] not in ("root", "0"), target
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd
    assert yaml.safe_load(cmd.group(1)) == as_container(api_argv("0.0.0.0", 8000))


def bases_of(stages: dict[str, Stage], target: str) -> list[str]:
    """The stages a target is FROM, nearest first (not the ones it only copies from)."""
    out: list[str] = []
    name = stages[target].base
    while name in stages:
        out.append(name)
        name = stages[name].base
    return out


def test_dockerignore_admits_what_the_dockerfile_copies_and_nothing_else():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "start from nothing: new directories stay out of the build context"
    admitted = {rule[1:].strip("/") for rule in rules if rule.startswith("!")}
    stages = dockerfile_stages()
    assert admitted == set().union(*(context_sources(stages, target) for target in IMAGES))


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def exec_start(service: configparser.SectionProxy) -> list[str]:
    """ExecStart as systemd runs it: ${VAR} from Environment= defaults, %% -> %."""
    env = dict(pair.split("=", 1) for pair in service.get("Environment", "").split())
    words = service["ExecStart"].split()
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w).replace("%%", "%") for w in words]


@pytest.mark.parametrize("name", ["celery-worker", "celery-beat"])
def test_systemd_units_run_the_stacks_command_line(name: str, tmp_path: Path):
    service = unit(ROOT / "deploy" / f"{name}.service")["Service"]
    expected = (
        stack_for(tmp_path).worker_argv("worker@%h")
        if name == "celery-worker"
        else beat_argv(f"{STATE}/beat/celerybeat-schedule")
    )
    assert exec_start(service) == ["/opt/celery-lab/.venv/bin/python", *expected[1:]]
    # A foreground process: Type=forking would time the start out and kill it (the guide's mistake).
    assert service["Type"] == "exec"
    assert "ExecStop" not in service
    assert service["EnvironmentFile"] == "/etc/celery-lab/celery-lab.env"
    assert service.get("User") not in (None, "root")


def test_systemd_worker_shutdown_is_warm():
    service = unit(ROOT / "deploy" / "celery-worker.service")["Service"]
    assert service["KillMode"] == "mixed"  # SIGTERM to the main process only; it stops its pool children
    assert int(service["TimeoutStopSec"]) >= 60


def test_systemd_env_example_uses_settings_names():
    lines = (ROOT / "deploy" / "celery-lab.env.example").read_text().splitlines()
    names = {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z_]+=", line)}
    assert names
    assert names <= set(Settings.env_names())
