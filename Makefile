# Every install goes through constraints.txt so that pip never swaps the pinned CPU torch
# for a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --constraint constraints.txt

.PHONY: demo test lint install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e ".[video,export]"
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e ".[dev,video,export]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Until the end-to-end demo lands, `make demo` shows what the main models cost.
DEMO_MODELS := tsn_resnet50 tsm_resnet50 tsm_resnet50_nl tsm_resnet101 tsm_mobilenet_v2
demo: install
	@for m in $(DEMO_MODELS); do $(BIN)/timeshift info $$m --num-classes 400 --frames 8 || exit 1; echo; done
	$(BIN)/timeshift info tsm_mobilenet_v2 --num-classes 27 --frames 1 --direction unidirectional

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: install-dev lint
	$(BIN)/python -m pytest -q

bench: install-dev
	$(BIN)/python benchmarks/bench_shift.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
