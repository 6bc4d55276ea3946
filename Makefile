# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs what it needs when that is missing or changed: the package alone for the
# demo, the package with its test extra (pytest, ruff, mypy, LiteRT, the PostgreSQL driver) for the tests, which
# are linted and type-checked first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PACKAGE := $(VENV)/.stamp-package
TESTING := $(VENV)/.stamp-test

.PHONY: demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(PACKAGE): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(TESTING): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@ $(PACKAGE)

demo: $(PACKAGE)
	$(BIN)/dac-search --model cifar10-resnet20 --device local --budget 0.7x --trials 30

test: $(TESTING)
	$(BIN)/ruff check dac_search profilers tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
