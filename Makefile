# biograd: `make demo` (set up + quick comparison of every rule on real MNIST),
# `make test` (set up + test suite). Both create .venv, install everything and fetch the data.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.biograd-installed

.PHONY: setup data demo test test-slow lint bench clean

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

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

bench: data
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
