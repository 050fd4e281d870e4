# Two commands do all the set-up on a fresh machine; each skips what is already there.
#   make demo   a sandboxed backtest of the example strategy, printing its metrics
#   make test   lint, type check, and every test against the real daemon and image
# and for the edit-test loop:
#   make test-fast   the tests that need no Docker, on both cores (about a minute, PostgreSQL and Temporal included)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHARED_DATA ?= $(abspath ../shared/data/backtrader)
DEMO_DATA := .state/data
export BACKTEST_DATA_DIR ?= $(abspath $(DEMO_DATA))
export BACKTEST_STATE_DIR ?= $(abspath .state/jobs)

.PHONY: demo test test-fast image lint install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

image: $(STAMP)
	$(BIN)/backtest-sandbox build-image

$(DEMO_DATA)/ORCL/D1.csv: | $(STAMP)
	$(BIN)/backtest-sandbox data import $(SHARED_DATA)/orcl-1995-2014.txt --symbol ORCL --timeframe D1

demo: image $(DEMO_DATA)/ORCL/D1.csv
	$(BIN)/backtest-sandbox run examples/sma_cross.py --config examples/sma_cross.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test-fast: $(STAMP)
	$(BIN)/pytest -m "not docker" -n 2

# The fast tier in parallel, then the Docker tests one process (they share the daemon's cores).
test: image lint test-fast
	$(BIN)/pytest -m docker
