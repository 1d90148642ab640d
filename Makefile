# The README's two commands: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test test-fast lint bench clean

# Two installs share the .venv, each with a stamp of its own: `make run` installs what
# running needs (no dev tools); `make test` (and lint, bench) the dev tools too.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(RUN_STAMP)
	mkdir -p /tmp/flowlord-drop  # the directory workflows/drop.toml watches
	$(BIN)/flowlord -c examples/flowlord.toml run

# bytecode first: the tests start the daemon and the CLI hundreds of times, and where
# PYTHONDONTWRITEBYTECODE is set each start compiled every module again
test: $(DEV_STAMP)
	$(BIN)/ruff check flowlord tests bench
	$(BIN)/mypy
	$(BIN)/python -m compileall -q flowlord
	$(BIN)/python -m pytest -q

# the in-process tests only: no process, server or browser started (the `slow` marker);
# four at a time (pytest-xdist): they wait on the disk and on threads more than they compute
test-fast: $(DEV_STAMP)
	$(BIN)/python -m compileall -q flowlord
	$(BIN)/python -m pytest -q -m "not slow" -n 4

lint: $(DEV_STAMP)
	$(BIN)/ruff check flowlord tests bench
	$(BIN)/mypy

bench: $(DEV_STAMP)
	$(BIN)/python bench/refresh.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/tasks.py
	$(BIN)/python bench/redis_bus.py
	$(BIN)/python bench/http_api.py
	$(BIN)/python bench/policy.py

clean:
	rm -rf $(VENV) flowlord.db flowlord.db-wal flowlord.db-shm flowlord.db.lock logs
