# make bench: set up .venv and run the main job (quick profile on a CPU, full on a GPU).
# make test:  set up .venv and run the self-tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup bench test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m pytest benches/ --benchmark-autosave

test: $(STAMP)
	$(PY) -m pytest tests/

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .benchmarks reports artifacts .pytest_cache .hypothesis
