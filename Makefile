# The whole developer interface: install, run, test, lint, bench, clean.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What `make lint` checks is what `make format` formats: all our Python.
PY_DIRS := shared functions tests benchmarks tools examples

.PHONY: install services run test test-faults lint format bench clean

# Servers the tests start themselves (unprivileged processes, temp dirs, free ports on
# 127.0.0.1), as COMMAND:DEBIAN_PACKAGE. As root, the set-up installs the missing ones with apt.
SERVICES := redis-server:redis-server rabbitmq-server:rabbitmq-server prometheus:prometheus promtool:prometheus

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Debian: apt-get install python3 python3-venv)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/orchestrator run

services:
	@missing=""; for pair in $(SERVICES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing the test servers:$$missing (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: install services
	$(BIN)/python -m pytest -p no:randomly -x --durations=15

# The fault matrix of docs/reliability.md at full scale (make test runs it scaled down).
test-faults: install services
	FAULTS_SCALE=full $(BIN)/python -m pytest -p no:randomly -m faults tests/system --durations=15

lint: install
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy --strict $(PY_DIRS)
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format $(PY_DIRS)
	$(BIN)/ruff check --fix $(PY_DIRS)

# the peers of benchmarks/peers.py (the `bench` extra), installed once
$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: install $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .run build *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
