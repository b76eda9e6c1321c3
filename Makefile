# The whole developer interface: install, run, test, lint, bench, clean.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Debian: apt-get install python3 python3-venv)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/orchestrator run

test: install
	$(BIN)/python -m pytest -p no:randomly -x --durations=15

lint: install
	$(BIN)/ruff check shared functions
	$(BIN)/ruff format --check shared functions
	$(BIN)/mypy --strict shared functions
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format shared functions tests benchmarks
	$(BIN)/ruff check --fix shared functions tests benchmarks

# the peers of benchmarks/peers.py (the `bench` extra), installed once
$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: install $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .run build *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
