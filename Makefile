# aiotask — every target that needs the virtualenv builds it first, so each works on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
# Benchmarks run from their own virtualenvs so the peers' version pins never touch .venv:
# .venv-bench holds aiotask (editable) + Celery and the asyncio peers; arq pins redis<6, so it
# lives in .venv-bench/arq; Oban for Python needs Python >= 3.12, so it lives in .venv-bench/oban
# (skipped, with a message, without a python3.12). The harness runs each framework's processes
# with the right python.
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed
# Oban for Python's venv (it requires Python >= 3.12)
PY312 ?= python3.12
# The newest Python the machine has: unit and CLI tests also run there (.venv313).
PY313 ?= python3.13
# Test processes for `make test` (pytest-xdist; a file's tests stay in one process, so its
# private servers start once). The suite mostly waits (leases, windows, "nothing arrives
# within"), so more processes than cores use the idle time: on a quiet 2-core machine
# (2026-11-30) the pytest step took 13 min 27 s with 2, 9 min 38 s-10 min 16 s with 3, and
# 6 min 28 s and 6 min 54 s with 4 (the whole `make test` 7 min 19 s and 7 min 3 s; all 2,019
# passing each time). An earlier trial of 4 under other load flaked timing-sensitive fault
# tests; if they flake, `make test TEST_WORKERS=3` is the way back. Files are handed out
# slowest first (tests/schedule.py, tests/durations.txt; --no-loadscope-reorder keeps that
# order): xdist's own order (most tests first) left the slow process files to the end.
TEST_WORKERS ?= 4
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
VENV313 := .venv313

.DEFAULT_GOAL := help
.PHONY: help install chromium pgbouncer format lint typecheck test test-unit test-fast test-py313 demo bench bench-smoke chaos chaos-short docs clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python >= 3.11) on PATH, or run make PYTHON=python3.12"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## make .venv and install aiotask with its dev tools

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev,docs]'
	@touch $(DOCS_STAMP)

$(BENCH_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python >= 3.11) on PATH, or run make PYTHON=python3.12"; exit 2; }
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install -q --upgrade pip
	$(BENCH_BIN)/pip install -q -e '.[all]' --group bench
	$(PYTHON) -m venv $(BENCH_VENV)/arq
	$(BENCH_VENV)/arq/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/arq/bin/pip install -q -e '.[all]' --group bench-arq
	@py=$(PY312); \
	if ! $$py -c 'import sys' >/dev/null 2>&1; then \
	  py=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | tail -1); fi; \
	if [ -n "$$py" ] && $$py -c 'import sys' >/dev/null 2>&1; then \
	  $$py -m venv $(BENCH_VENV)/oban && $(BENCH_VENV)/oban/bin/pip install -q --upgrade pip \
	    && $(BENCH_VENV)/oban/bin/pip install -q --group bench-oban; \
	else echo "no python3.12: the Oban row of the PostgreSQL benchmark reads unavailable"; fi
	@touch $(BENCH_STAMP)

# The dashboard's browser tests drive Debian's chromium (Playwright with executable_path; no
# browser download). Installed only when missing; needs root (CI and these machines are).
chromium:  ## Debian's chromium for the dashboard's browser tests (installed when missing)
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing chromium (apt-get) for the dashboard's browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	    || echo "could not install chromium: the browser tests skip (or fail in CI)"; \
	fi

# The PostgreSQL tests through PgBouncer (transaction pooling) start a private Debian pgbouncer in
# front of the machine's PostgreSQL. Installed only when missing, like chromium.
pgbouncer:  ## Debian's pgbouncer for the PgBouncer tests (installed when missing)
	@if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then \
	  echo "installing pgbouncer (apt-get) for the PgBouncer tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer; } \
	    || echo "could not install pgbouncer: the PgBouncer tests skip (or fail in CI)"; \
	fi

format: $(STAMP)  ## format and autofix
	$(BIN)/ruff format aiotask tests benchmarks examples
	$(BIN)/ruff check --fix aiotask tests benchmarks examples

lint: $(STAMP)  ## ruff check, format check, and the layer contract
	$(BIN)/ruff check aiotask tests benchmarks examples
	$(BIN)/ruff format --check aiotask tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)  ## mypy --strict over aiotask and tests
	$(BIN)/mypy

# The suite starts hundreds of worker and CLI processes. Where PYTHONDONTWRITEBYTECODE is set
# (as on CI machines) none writes aiotask's bytecode, so each compiled it again from source:
# compileall writes it once (it skips files whose bytecode is current).
PYC := $(BIN)/python -m compileall -q aiotask tests examples

test: lint typecheck docs chromium pgbouncer $(STAMP)  ## lint, typecheck, docs, then the whole test suite (needs Redis and RabbitMQ or skips)
	$(PYC)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_XDIST) tests

test-unit: $(STAMP)  ## only the pure unit tests
	$(BIN)/python -m pytest -q tests/unit

test-py313:  ## unit and CLI tests on python3.13 too (skipped, with a message, if it is absent)
	@py=$(PY313); \
	if ! $$py -c 'import sys' >/dev/null 2>&1; then \
	  py=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.13*/bin/python3.13 2>/dev/null | tail -1); fi; \
	if [ -z "$$py" ] || ! $$py -c 'import sys' >/dev/null 2>&1; then \
	  echo "test-py313: skipped: $(PY313) is not on PATH (nor in pyenv)"; exit 0; fi; \
	set -e; \
	if [ ! -f $(VENV313)/.installed ] || [ pyproject.toml -nt $(VENV313)/.installed ]; then \
	  $$py -m venv $(VENV313); \
	  $(VENV313)/bin/pip install -q --upgrade pip; \
	  $(VENV313)/bin/pip install -q -e '.[dev]'; \
	  touch $(VENV313)/.installed; \
	fi; \
	echo "test-py313: $$($(VENV313)/bin/python --version)"; \
	$(VENV313)/bin/python -m compileall -q aiotask tests; \
	$(VENV313)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_XDIST) tests/unit tests/cli

demo: $(STAMP)  ## a worker and a producer in two processes on the embedded SQLite default
	$(PYC)
	$(BIN)/python examples/demo.py

bench: $(BENCH_STAMP)  ## the full benchmark, aiotask vs Celery and peers; writes docs/benchmarks.md
	$(BENCH_BIN)/python -m benchmarks.harness --full

bench-smoke: $(BENCH_STAMP)  ## a small benchmark for CI; prints ratios, fails if aiotask is slower than Celery
	$(BENCH_BIN)/python -m benchmarks.harness --smoke

cluster: $(STAMP)  ## Redis Cluster suite (6-node clusters), RabbitMQ 3-node kill -9 test, Sentinel failover (~6 min)
	AIOTASK_CLUSTER_TESTS=full $(BIN)/python -m pytest -q -p no:cacheprovider tests/cluster \
	  tests/faults/test_redis_sentinel_failover.py

chaos: $(STAMP)  ## the chaos suite: kill -9, broker restarts, proxy faults on private servers (long)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

chaos-short: $(STAMP)  ## a small chaos run (CI): every fault once per broker, ~3 minutes
	$(BIN)/python -m tests.chaos --short $(CHAOS_ARGS)

docs: $(DOCS_STAMP)  ## check the docs (links, every example runs, CLI, settings), build the site --strict into site/
	$(BIN)/python -m tests.docs_check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) $(VENV313) .mypy_cache .ruff_cache .pytest_cache build dist site *.egg-info aiotask.db*
