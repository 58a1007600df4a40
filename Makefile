# anyformer: every target sets up what it needs from nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.anyformer-installed
PYTEST_FLAGS ?=
# test workers (pytest-xdist): one per core, at most 4 (each test runs one torch thread)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
XDIST := -n $(TEST_WORKERS) --dist worksteal

.PHONY: install demo test test-all bench docs lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[data,peers,compress,dev,tensorboard]"
	touch $(STAMP)

demo: install
	$(BIN)/anyformer run

test: install
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_FLAGS)

test-all: install
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_FLAGS)

bench: install
	$(BIN)/python benchmarks/train_throughput.py

docs: install
	$(BIN)/python scripts/update_readme.py

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
