# biograd: `make demo` (set up + quick comparison of every rule on real MNIST),
# `make test` (set up + test suite), `make mutation` (mutation check, run by CI after the
# tests). They create .venv, install everything and fetch the data.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.biograd-installed

.PHONY: setup data demo test test-slow mutation lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

data: setup
	$(BIN)/biograd data fetch mnist fashion_mnist

demo: data
	$(BIN)/biograd compare --config configs/demo_mnist.yaml --overwrite

test: data
	$(BIN)/python -m pytest

test-slow: data
	$(BIN)/python -m pytest -m slow -v

# one-line defects in the rules (scripts/mutants.py); fails below 95% killed, on a surviving
# core-equation mutant, or on a mutant whose code no longer exists
mutation: data
	$(BIN)/python scripts/mutation_check.py --json runs/mutation.json

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

bench: data
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
