# Two commands matter: `make run` and `make test`. Both build .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Every install takes its versions from the one lock file (see docs/operations.md).
LOCK := requirements.lock

.PHONY: run test lint typecheck check bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/hub db upgrade
	$(BIN)/hub serve

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check hub adapters tests bench tools
	$(BIN)/ruff format --check hub adapters tests bench tools

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

check: lint typecheck test

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/rest.py

# Pin what pyproject.toml asks for into the lock file, keeping the versions already pinned
# (`make lock LOCK_ARGS=--upgrade` takes the newest allowed); then commit it.
LOCK_ARGS ?=
lock: | $(BIN)/python
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
		$(LOCK_ARGS) -o $(LOCK)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
