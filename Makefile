# One command for each thing contributors do. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: install run test test-all lint bench clean

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/gateway

## run: the whole flow on generated demo data, SQLite, throwaway key (in ./demo)
run: install
	$(BIN)/gateway demo --dir $(DEMO_DIR)

## test: the default test suite (SQLite; PostgreSQL too when GATEWAY_TEST_DATABASE_URL is set)
test: install
	$(BIN)/python -m pytest

## test-all: the default suite plus the slow, exhaustive tests
test-all: install
	$(BIN)/python -m pytest -m "slow or not slow"

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
