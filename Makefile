# One command for each thing contributors do. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: install browser softhsm node openssl run test test-all lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Two install stamps: the demo needs the gateway and its data generator (synthetic/)
# only; the tests add the dev tools and PostgreSQL's driver. pip shows its progress.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
$(RUN_STAMP): pyproject.toml synthetic/pyproject.toml | $(BIN)/python
	@echo "installing the gateway and the demo's data generator into $(VENV)/"
	$(BIN)/python -m pip install -e . -e ./synthetic
	@touch $@

$(TEST_STAMP): pyproject.toml synthetic/pyproject.toml | $(BIN)/python
	@echo "installing the gateway with its dev tools and PostgreSQL's driver into $(VENV)/"
	$(BIN)/python -m pip install -e '.[dev,postgres]' -e ./synthetic
	@touch $@

## install: everything a contributor needs (what `make test` installs)
install: $(TEST_STAMP)

## run: the whole flow on generated demo data, SQLite, throwaway key (in ./demo)
run: $(RUN_STAMP)
	$(BIN)/gateway demo --dir $(DEMO_DIR)

## browser: Debian's chromium for the web pages' tests (tests/test_web.py), when it is
## missing and apt-get can install it (as root); Playwright never downloads a browser.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium and chromium-driver with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium is missing: sudo apt-get install chromium chromium-driver (the web tests skip without it)"; \
	  fi; \
	fi

## softhsm: Debian's SoftHSM2 for the HSM key backend's tests (tests/test_hsm.py), when
## softhsm2-util is missing and apt-get can install it (as root).
softhsm:
	@if ! command -v softhsm2-util >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing softhsm2 with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; \
	  else \
	    echo "softhsm2 is missing: sudo apt-get install softhsm2 (the HSM tests skip without it)"; \
	  fi; \
	fi

## node: Debian's Node.js and npm for the tests that run npm packages (the OpenID provider
## of tests/test_oidc.py, axe-core in tests/test_web_screens.py), when npm is missing and
## apt-get can install it (as root).
node:
	@if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing nodejs and npm with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else \
	    echo "npm is missing: sudo apt-get install nodejs npm (the SSO tests skip without it)"; \
	  fi; \
	fi
	@if command -v node >/dev/null 2>&1 && [ "$$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then \
	  echo "node $$(node --version) is too old for the OpenID provider of tests/test_oidc.py" \
	    "(oidc-provider 9 needs Node.js 20 or later; Debian 12 ships 18): install Debian 13's" \
	    "nodejs or NodeSource's; the SSO tests skip without it, and fail under CI=true"; \
	fi

## openssl: the openssl command, the timestamp authority of tests/test_anchors.py, when it
## is missing and apt-get can install it (as root).
openssl:
	@if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing openssl with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; \
	  else \
	    echo "openssl is missing: sudo apt-get install openssl (the TSA anchor tests skip without it)"; \
	  fi; \
	fi

## test: the default test suite (SQLite; PostgreSQL too when GATEWAY_TEST_DATABASE_URL is set),
## on every core (pytest-xdist; the tests of one xdist_group, sharing a costly fixture, on one)
test: $(TEST_STAMP) browser softhsm node openssl
	$(BIN)/python -m pytest -n auto --dist loadgroup

## test-all: the default suite plus the slow, exhaustive tests
test-all: $(TEST_STAMP) browser softhsm node openssl
	$(BIN)/python -m pytest -n auto --dist loadgroup -m "slow or not slow"

lint: install
	$(BIN)/ruff check gateway synthetic tests bench
	$(BIN)/ruff format --check gateway synthetic tests bench
	$(BIN)/mypy

# The peers compared in bench/bench_release.py (and Tumult in bench/utility.py), each in
# its own environment: their pins conflict with ours (SmartNoise brings an older OpenDP).
# Tumult needs Java.
PEERS := bench/.venvs
$(PEERS)/smartnoise/bin/python:
	$(PYTHON) -m venv $(PEERS)/smartnoise
	$(PEERS)/smartnoise/bin/python -m pip install --quiet 'smartnoise-sql==1.0.10' pyarrow

$(PEERS)/tumult/bin/python:
	$(PYTHON) -m venv $(PEERS)/tumult
	$(PEERS)/tumult/bin/python -m pip install --quiet 'tmlt.analytics==0.21.0' pyarrow

bench: install $(PEERS)/smartnoise/bin/python $(PEERS)/tumult/bin/python
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
