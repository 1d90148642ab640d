# The README's two commands: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test test-fast lint bench clean

$(BIN)/flowlord: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/flowlord
	mkdir -p /tmp/flowlord-drop  # the directory workflows/drop.toml watches
	$(BIN)/flowlord -c examples/flowlord.toml run

test: $(BIN)/flowlord
	$(BIN)/ruff check flowlord tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# the in-process tests only: no process, server or browser started (the `slow` marker)
test-fast: $(BIN)/flowlord
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/flowlord
	$(BIN)/ruff check flowlord tests bench
	$(BIN)/mypy

bench: $(BIN)/flowlord
	$(BIN)/python bench/refresh.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/tasks.py
	$(BIN)/python bench/redis_bus.py
	$(BIN)/python bench/http_api.py

clean:
	rm -rf $(VENV) flowlord.db flowlord.db-wal flowlord.db-shm flowlord.db.lock logs
