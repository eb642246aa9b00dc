# make bench:     set up .venv and run the main job (quick profile on a CPU, full on a GPU).
# make test:      set up .venv and run the self-tests.
# make results:   set up .venv, run the main job and the self-tests, and write results/<date>-<machine>-<profile>.md
#                 (its CSV, pictures and JSON beside it), headed by the commit, commands, machine and wall times.
# make gpu-smoke: on a first GPU machine, every GPU-only path once (small), then the GPU workflow's own steps.
# make gate-aa:   the regression gate's A/A study on this machine (run it on an idle machine; docs/gate.md,
#                 'The A/A study'): RUNS unchanged quick inference runs and INJECT_RUNS with a 25% slowdown injected.
# EXTRAS: dev (the self-tests' tools) and ort (ONNX Runtime for the CPU); on a CUDA machine EXTRAS=dev,ort-gpu,trt
# (onnxruntime-gpu, and TensorRT from NVIDIA's package index). Never ort and ort-gpu together: both are `onnxruntime`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,ort
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup bench test results lint docs clean gpu-smoke gate-aa

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m pytest benches/ --benchmark-autosave --benchmark-save-data

test: $(STAMP)
	$(PY) -m pytest tests/

RESULTS_ARGS ?= --tests
results: $(STAMP)
	$(PY) -m nn_speedups.report.regenerate $(RESULTS_ARGS)

# the smoke run, saved as the workflow saves main's baseline; a second run gated against it as a pull request is
# (artifacts and engines are cached by then); the gate's verdicts are shown, not enforced: this proves the steps
gpu-smoke: $(STAMP)
	$(PY) -m pytest benches/ --profile smoke --benchmark-autosave --benchmark-save-data --benchmark-storage=.benchmarks/smoke
	$(PY) -m pytest benches/ --profile smoke --benchmark-save-data --benchmark-json reports/smoke-head.json
	-$(PY) -m nn_speedups.gate .benchmarks/smoke reports/smoke-head.json --json reports/smoke-gate.json \
		--markdown reports/smoke-gate.md

RUNS ?= 10
INJECT_RUNS ?= 4
gate-aa: $(STAMP)
	$(PY) -m nn_speedups.gate --aa-study reports/gate-aa --runs $(RUNS) --inject-runs $(INJECT_RUNS) \
		--inject 'channels-last-fp32]:1.25' -- benches/test_inference.py

# the reference pages (docs/) as a site under site/; --strict: a broken link or a page left out of the nav fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .benchmarks reports artifacts .pytest_cache .hypothesis site
