# `make demo` and `make test` create .venv and install the project (editable) on first use: `make demo` only what the
# demo needs (the base dependencies and the CPU runtime, `.[cpu]`), `make test` also the test extras (`.[cpu,dev]`).
# Stamp files make a second run start at once; a changed pyproject.toml installs again.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
# the 15 slowest tests at the end of every run (where the suite's time goes)
DURATIONS ?= --durations=15

.PHONY: demo test test-fast lint format bench bench-quick bench-timm zoo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# the base dependencies: what `lambda-export` and the demo need
$(BASE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[cpu]"
	touch $(BASE_STAMP)

# the base dependencies and the test extras (a superset: the base stamp is refreshed too)
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[cpu,dev]"
	touch $(BASE_STAMP) $(DEV_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/lambda-export demo

# -rs: the reason of every skipped test (a later -r in PYTEST_ARGS, as .ci/run passes, replaces it)
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -rs $(DURATIONS) $(PYTEST_ARGS)

# the edit-test loop: everything but the slow tests and the example applications (node, browser, C++, ...)
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -rs -m "not slow and not examples" $(DURATIONS) $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# the grid of benchmarks/RESULTS.md (~16 min on 2 cores), then timm's LambdaResNets (benchmarks/TIMM.md, ~12 min)
bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/timm_bench.py

# timm's LambdaResNets alone: our export vs timm's own ONNX file vs TensorFlow; writes benchmarks/TIMM.md, timm.json
# (benchmarks/timm_bench.py --quick: one network, fewer rounds, for development)
bench-timm: $(DEV_STAMP)
	$(BIN)/python benchmarks/timm_bench.py

bench-quick: $(DEV_STAMP)
	$(BIN)/python benchmarks/run.py --quick

# every model of benchmarks/zoo_models.py through lambda-export and plain tf2onnx; writes benchmarks/ZOO.md, zoo.json
zoo: $(DEV_STAMP)
	$(BIN)/python benchmarks/zoo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
