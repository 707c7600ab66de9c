# Every install goes through constraints.txt so that pip never swaps the pinned CPU torch
# for a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --constraint constraints.txt

.PHONY: demo test test-fast lint install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e ".[video,export]"
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e ".[dev,video,export,openvino,tvm]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The main job: train TSN and TSM on the synthetic temporal dataset and compare (~10 min, CPU).
demo: install
	$(BIN)/timeshift demo --output runs/demo

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# everything (what CI runs), one worker per core (pytest-xdist). worksteal: the long tests
# (marked slow, scheduled first) run on one worker while the others take the rest and steal
# from its queue; a module split between workers builds its module fixtures in each (measured:
# 333 s against 454 s keeping modules whole). test-fast leaves out the tests marked slow.
# TVM's runtime, once loaded, does not survive the fork of a DataLoader worker in the same
# process (a test worker aborted in CI): its tests run in a pytest process of their own.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist worksteal --ignore=tests/test_tvm.py
PYTEST_TVM := $(BIN)/python -m pytest -q tests/test_tvm.py

test: install-dev lint
	$(PYTEST) --durations=15
	$(PYTEST_TVM)

test-fast: install-dev
	$(PYTEST) -m "not slow"
	$(PYTEST_TVM)

bench: install-dev
	$(BIN)/python benchmarks/bench_shift.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
