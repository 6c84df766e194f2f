# One command for a new machine: `make test` (venv, CPU torch, the project, ruff, mypy, pytest).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Kept equal to pyproject.toml's pins by `tools/lockfile.py check` (part of `make test`).
TORCH_VERSION := 2.13.0
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.7.0
TORCH_PIP_ARGS ?=
LOCK_VENV := .venv-lock

.PHONY: lock lockcheck test lint typecheck pytest install demo bench bench-search bench-ranking clean

# Everything but torch comes from requirements.lock (hashes checked, no resolution): a release
# made overnight cannot change what a commit installs. Then torch, pinned apart (the CPU wheel on
# this machine's disk; TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" on a
# Linux laptop without it), then the project itself without dependencies, then `pip check`.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

test: lockcheck lint typecheck pytest

lockcheck: $(STAMP)
	$(BIN)/python tools/lockfile.py check

# Rewrites requirements.lock and docker/requirements.lock from pyproject.toml with pip-tools,
# keeping every pin that still fits. Upgrades: `make lock UPGRADE=1` (all) or
# `make lock UPGRADE_PACKAGE=ray` (one; `ray==2.61.0` for a given version).
lock:
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	$(LOCK_VENV)/bin/python tools/lockfile.py compile $(if $(UPGRADE),--upgrade) \
		$(foreach p,$(UPGRADE_PACKAGE),--upgrade-package $(p))

demo: $(STAMP)
	$(BIN)/hyctas demo --out runs/demo --overwrite

bench: $(STAMP)
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/latency_table.py
	$(BIN)/python benchmarks/supernet_step.py

# Needs the demo's outputs in runs/demo (make demo).
bench-search: $(STAMP)
	$(BIN)/python benchmarks/search_vs_random.py
	$(BIN)/python benchmarks/search_throughput.py

# Supernet ranking fidelity against standalone training (under an hour on 2 CPU cores).
bench-ranking: $(STAMP)
	$(BIN)/python benchmarks/supernet_ranking.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache
