# syntax=docker/dockerfile:1
# Two images, one per audience (compose.yaml picks them with `build: target:`):
# - `app`: the reference system, what a user copies. api, worker, beat and the one-shot init-db. It holds
#   app/ and the [project] dependencies only (`--no-default-groups`): no lab tools (Locust, numpy, scipy,
#   matplotlib, the Grafana SDK, typer, rich, Flower, aiosmtpd). The last stage, so a build without --target
#   (lab/pytest_celery_local.py's worker image) gets this one.
# - `tools`: the lab's helper services. flower, the events exporter (lab.exporter), the SMTP sink
#   (lab.smtp_sink) and the AI stub (lab.ai_stub). It holds app/ and lab/ with the runtime plus the `lab`
#   dependency group. The exporter's --ledger-url (dashboards/, chaos/) is a lab-run option and not in it.
# Each service sets its own command, the same command line the local Stack runs (lab/stack.py;
# tests/lab/test_compose.py keeps them equal, and tests/test_packaging.py checks what each image installs).
#
# Differences from the guide's Dockerfile.worker, on purpose:
# - Not one image per role: the worker and the API ship the same code and dependencies, and an image per role
#   would differ only in CMD (compose's `command:` does that). The split is by dependencies instead.
# - python:3.12-slim instead of 3.14: the lock has wheels for every dependency on 3.12 (numpy, scipy, ...).
# - Installed from uv.lock (`uv sync --locked`), not a loose requirements.txt: the image runs exactly the
#   versions the tests ran, and the build fails if pyproject.toml and the lock disagree.
# - The project itself is not installed (`--no-install-project`): celery-lab is an application run from its
#   source tree, not a wheel. The code sits in /opt/celery-lab, on PYTHONPATH.
# - Runs as an unprivileged user: Celery warns when a worker runs as root.

FROM python:3.12-slim AS uv
# The uv version pinned in the lock's dev group.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock ./

# Dependencies in their own stages and layers: code changes do not re-install them.
FROM uv AS app-deps
RUN uv sync --locked --no-default-groups --no-install-project

FROM uv AS tools-deps
RUN uv sync --locked --no-default-groups --group lab --no-install-project

FROM python:3.12-slim AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/celery-lab --create-home app \
    && mkdir -p /var/lib/celery-lab/exports /var/lib/celery-lab/reports /var/lib/celery-lab/beat \
        /var/lib/celery-lab/smtp \
    && chown -R app:app /var/lib/celery-lab
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/celery-lab \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Relative paths in Settings defaults (./data/...) land in the writable state directory.
WORKDIR /var/lib/celery-lab
EXPOSE 8000
# The API by default; compose.yaml gives every other service its own command.
CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]

FROM runtime AS tools
COPY --from=tools-deps /opt/venv /opt/venv
COPY app /opt/celery-lab/app
COPY lab /opt/celery-lab/lab
RUN python -m compileall -q /opt/celery-lab
USER app

FROM runtime AS app
COPY --from=app-deps /opt/venv /opt/venv
COPY app /opt/celery-lab/app
RUN python -m compileall -q /opt/celery-lab
USER app
