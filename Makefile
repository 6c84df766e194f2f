# One command for a new machine: `make test` (venv, CPU torch, the project, ruff, mypy, pytest).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest install demo bench bench-search clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on this disk (an unpinned torch downloads CUDA).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,services]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

test: lint typecheck pytest

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
