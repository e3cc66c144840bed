# The README's two commands. Both bootstrap first (scripts/bootstrap.sh): Debian packages when missing,
# then the virtualenv from uv.lock.
.PHONY: demo test bootstrap lint

demo: bootstrap
	.venv/bin/lab demo

test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/pytest

bootstrap:
	@bash scripts/bootstrap.sh

lint: bootstrap
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports
