# The README's two commands. Both bootstrap first (scripts/bootstrap.sh): Debian packages when missing,
# then the virtualenv from uv.lock. Tests run in two pytest-xdist workers, a test file per worker (its module
# fixtures stay in one process): most of a stack test's time is waiting on processes, so two at a time on two
# cores took 14 min where one at a time took 23 (the slowest 25 are listed at the end).
.PHONY: demo test bootstrap lint

demo: bootstrap
	.venv/bin/lab demo

test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/pytest -n 2 --dist loadfile --durations=25

bootstrap:
	@bash scripts/bootstrap.sh

lint: bootstrap
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports
