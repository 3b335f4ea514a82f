# Two commands matter: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: demo test test-external unit lint bench bench-tools deps tools clean fuzz

$(STAMP): source/requirements.txt requirements-dev.txt pyproject.toml
	@command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || \
	  { echo "installing mariadb-server (apt-get)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

deps: $(STAMP)

# promtool checks the metrics and alert rules and headless Chromium renders the status page in the
# tests; installed when missing. promtool is required (REQUIRE_TOOLS below: its tests fail without
# it); the Chromium test skips, saying why, when apt-get cannot install it.
tools:
	@command -v promtool >/dev/null 2>&1 || \
	  { echo "installing prometheus (promtool) (apt-get)"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null || \
	    echo "could not install prometheus: the promtool tests will fail"; }
	@command -v chromium >/dev/null 2>&1 || \
	  { echo "installing chromium (apt-get)"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null || \
	    echo "could not install chromium: the status page screenshot test will be skipped"; }

# External validators whose tests fail instead of skipping when missing (tests/required_tools.py):
# promtool from `tools`, the others from requirements-dev.txt.
REQUIRE_TOOLS ?= promtool shellcheck hadolint docker-compose

## Run the whole test suite (style and type checks, unit + integration on throwaway MariaDB servers).
test: $(STAMP) tools lint
	REQUIRE_TOOLS="$(REQUIRE_TOOLS)" $(PY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)

## The integration suite against running servers (MySQL or MariaDB), e.g.
##   make test-external TEST_SOURCE_URL=mysql://root:pw@127.0.0.1:3306 TEST_TARGET_URL=mysql://root:pw@127.0.0.1:3307
## Each test uses fresh databases; tests that start, kill or reconfigure servers skip.
test-external: $(STAMP)
	@[ -n "$(TEST_SOURCE_URL)" ] && [ -n "$(TEST_TARGET_URL)" ] || { echo "set TEST_SOURCE_URL and TEST_TARGET_URL"; exit 2; }
	TEST_SOURCE_URL="$(TEST_SOURCE_URL)" TEST_TARGET_URL="$(TEST_TARGET_URL)" $(PY) -m pytest tests/integration -q -p no:cacheprovider -rs $(PYTEST_ARGS)

## Differential fuzzer with fresh random seeds (issue 11): FUZZ_MINUTES (10), FUZZ_SEED (first seed),
## FUZZ_EXCLUDE (comma-separated feature names). Prints each divergence's minimal reproduction.
FUZZ_MINUTES ?= 10
fuzz: $(STAMP)
	FUZZ_MINUTES=$(FUZZ_MINUTES) FUZZ_SEED=$(FUZZ_SEED) FUZZ_EXCLUDE=$(FUZZ_EXCLUDE) \
	  $(PY) -m pytest tests/fuzz/test_fuzz.py -k fresh_seeds -s -q -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

## Style and types: ruff's rules and formatting, mypy --strict on the package (pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check source tests bench
	$(VENV)/bin/ruff format --check source tests bench
	$(VENV)/bin/mypy

## Start two local MariaDB servers with a demo schema and run the daemon against them.
demo: $(STAMP)
	$(PY) bench/demo.py

## mydumper + myloader, the baseline of the initial-load benchmark (issue 18); installed when missing
## (the benchmark prints a "not installed" row when apt-get cannot install it).
bench-tools:
	@{ command -v mydumper >/dev/null 2>&1 && command -v myloader >/dev/null 2>&1; } || \
	  { echo "installing mydumper (apt-get)"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mydumper >/dev/null || \
	    echo "could not install mydumper: its baseline will be reported as not installed"; }

## Benchmark against mydumper + myloader, plain dlt and the raw LOAD DATA pipe on two server profiles
## (tuned, MariaDB defaults), plus start-up times; writes bench/RESULTS.md. BENCH_SCALE_ROWS=10000000
## adds the scale check on the default profile; BENCH_SKIP_DLT_DEFAULT=1 skips plain dlt there.
bench: $(STAMP) bench-tools
	$(PY) bench/startup_bench.py
	$(PY) bench/run_bench.py

clean:
	rm -rf $(VENV) .demo staging .dlt_pipelines
