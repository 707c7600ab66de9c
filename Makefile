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
	$(PIP) --quiet -e ".[dev,video,export,openvino,tvm,ray,web]"
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
# TVM's and OpenVINO's runtimes, once loaded, do not survive a later fork in the same process
# (DataLoader workers, subprocesses: test workers aborted in CI): the tests that load them run
# in pytest processes of their own, one per runtime, after the rest.
# Ray starts its own processes (raylet, workers) and the browser tests a Chromium: they also run
# alone.
ISOLATED := tests/test_tvm.py tests/test_openvino.py tests/test_precision.py tests/test_ray.py \
	tests/test_serve_browser.py
PYTEST := $(BIN)/python -m pytest -q -n auto --dist worksteal $(ISOLATED:%=--ignore=%)
PYTEST_ISOLATED := $(BIN)/python -m pytest -q

test: install-dev lint
	$(PYTEST) --durations=15
	$(PYTEST_ISOLATED) tests/test_tvm.py
	$(PYTEST_ISOLATED) tests/test_openvino.py tests/test_precision.py
	$(PYTEST_ISOLATED) tests/test_ray.py
	$(PYTEST_ISOLATED) tests/test_serve_browser.py

test-fast: install-dev
	$(PYTEST) -m "not slow"
	$(PYTEST_ISOLATED) tests/test_tvm.py
	$(PYTEST_ISOLATED) tests/test_openvino.py tests/test_precision.py
	$(PYTEST_ISOLATED) tests/test_ray.py
	$(PYTEST_ISOLATED) tests/test_serve_browser.py

bench: install-dev
	$(BIN)/python benchmarks/bench_shift.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
