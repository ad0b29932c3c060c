# visionzoo: every target creates .venv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export OMP_NUM_THREADS ?= 2

.PHONY: install train test test-timm test-all bench lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## train the default model on the built-in digits data (a few minutes on 2 CPU cores)
train: $(STAMP)
	$(PY) train.py $(ARGS)

## the fast test suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

## timm's own tests/test_models.py (from the installed timm's sdist) over every zoo model
test-timm: $(STAMP)
	$(PY) tests/timm_suite/run.py $(ARGS)

## everything, including slow learning / DDP / multirun tests
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

## speed and memory benchmarks; results go to docs/benchmarks.md
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache .timm-suite
