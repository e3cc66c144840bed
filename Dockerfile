# syntax=docker/dockerfile:1
# One image for every Python service in compose.yaml: api, worker, beat, flower, the events exporter, the SMTP
# sink, the AI stub and the one-shot init-db. Each service sets its own command, the same command line the local
# Stack runs (lab/stack.py; tests/lab/test_compose.py keeps them equal).
#
# Differences from the guide's Dockerfile.worker, on purpose:
# - One image instead of one per role: the worker and the API ship the same code and dependencies, and an
#   image per role would differ only in CMD (compose's `command:` does that) while doubling builds.
# - python:3.12-slim instead of 3.14: the lock has wheels for every dependency on 3.12 (numpy, scipy, ...).
# - Installed from uv.lock (`uv sync --locked`), not a loose requirements.txt: the image runs exactly the
#   versions the tests ran, and the build fails if pyproject.toml and the lock disagree.
# - Runs as an unprivileged user: Celery warns when a worker runs as root.

FROM python:3.12-slim AS build
# The uv version pinned in the lock's dev group.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first, in their own layer: code changes do not re-install them.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project
COPY README.md ./
COPY app ./app
COPY lab ./lab
RUN uv sync --locked --no-dev --no-editable

FROM python:3.12-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/celery-lab --create-home app \
    && mkdir -p /var/lib/celery-lab/exports /var/lib/celery-lab/reports /var/lib/celery-lab/beat \
        /var/lib/celery-lab/smtp \
    && chown -R app:app /var/lib/celery-lab
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Relative paths in Settings defaults (./data/...) land in the writable state directory.
WORKDIR /var/lib/celery-lab
USER app
EXPOSE 8000
# The API by default; compose.yaml gives every other service its own command.
CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
