# Two commands matter: `make dev` runs the whole platform, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
PYTHON ?= python3
UV := .local/uv/bin/uv
PY := .venv/bin/python
export UV_PROJECT_ENVIRONMENT := .venv
# Debian packages the tests and benchmarks use: a real browser, a load generator, promtool, HAProxy and
# pgbench (in Debian's postgresql package; bench/api.py runs it against the service's own SQL).
# libfaketime: tests/faults/test_clock_skew.py starts a service with its wall clock off (testkit.faketime).
SYSTEM_PACKAGES := chromium wrk prometheus haproxy postgresql libfaketime pgbouncer

.PHONY: help install system-deps dev test unit e2e test-packaging chart-docs spa lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .local/uv
	.local/uv/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: .venv/.synced ## create .venv from the lock file

system-deps: ## install the Debian packages tests need (chromium, wrk, prometheus, haproxy, postgresql for pgbench, libfaketime for the clock-skew faults, pgbouncer for the pooler check) when missing
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "please install:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

dev: install ## run the whole platform locally (Ctrl-C stops it); DEV_PROMETHEUS=1 adds Prometheus on :9090
	$(PY) -m devstack

# The suite starts hundreds of Python processes (services, migrations, command lines); where the
# environment sets PYTHONDONTWRITEBYTECODE (container images often do), each would compile every module it
# imports from source again (~0.7 s a start). The tests keep the compiled bytecode (__pycache__/, ignored
# by git and .dockerignore).
test unit e2e test-packaging: export PYTHONDONTWRITEBYTECODE :=

# Three pytest-xdist workers (testkit.xdistsched: a test file is a unit of work, the browser tests and the
# fault suite groups of their own): 625-688 s of tests in six runs on a shared two-core machine on
# 2026-12-07 (all passed but the first: one test, a race fixed below), where two workers took 866-954 s in
# that day's clean runs (933 s in the project's last CI); the tests' own times add up to ~1,920-1,950 s,
# ~640-655 s a worker: all three busy to the end. A third process gains on two cores because the tests
# wait (for servers, for Postgres, for timers) more than they compute. Postgres sessions allow it: the
# tests' services close pooled connections idle 10 s (DB_POOL_IDLE_SECONDS in
# testkit.fixtures.service_env), and three-worker runs peaked at 60-70 sessions of the shared server's 100
# (63 in a clean CI run). The timing races the extra load showed were fixed in the tests
# (test_decision_statements' statement text, the kit's deadlock count, the fault matrix's probes built
# before any is sent, test_locks' slack). `make test TEST_WORKERS=2` runs on two; TEST_WORKERS=0 runs the suite in one
# process, in a fixed order.
TEST_WORKERS ?= 3
# The run's temporary files in a directory of this checkout's own (pytest empties it at the start), not
# pytest's shared /tmp/pytest-of-<user>: another pytest session of the same user (a test run beside
# `make test`) removes that root's group and other bits and deletes older numbered directories, which
# took the embedded Postgres of tests/bench/test_backing.py its data directory ("Permission denied").
# Under /tmp and short: unix sockets live under it (at most 107 bytes a path).
TEST_TMP ?= /tmp/tsp-pytest-$(shell printf %s "$(CURDIR)" | md5sum | cut -c1-8)

test: install system-deps ## the whole suite (unit, integration on real Postgres/Redis, end-to-end, browser, packaging) on three workers
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --basetemp=$(TEST_TMP)

# The fast tier stays in one process: its tests are CPU-bound and short, and two workers each importing
# the whole suite cost more than they save (measured on a busy two-core machine: 126 s vs 60 s).
unit: install ## the fast tier: in-process tests of pure logic (no servers, no network, fake clocks)
	$(PY) -m pytest -m unit -q

e2e: install system-deps ## only the browser end-to-end tests (headless Chromium)
	$(PY) -m pytest -m browser

test-packaging: install system-deps ## only the chart, image, alert-rule and dashboard checks
	$(PY) -m pytest tests/packaging

spa: ## build the SPA into spa/dist (make dev does this when sources changed)
	npm ci --no-audit --no-fund --prefix spa
	npm run build --prefix spa

chart-docs: install ## regenerate what is derived from the chart: its README's values table, deploy/prometheus/rules/
	$(PY) charts/generate_readme.py
	$(PY) charts/generate_rules.py

lint: install ## ruff and mypy --strict
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	@# each service's tests/ is its own root (several tests/conftest.py), so one mypy run per folder
	@for d in services/*/tests; do echo "mypy $$d"; .venv/bin/mypy "$$d" || exit 1; done

format: install ## apply ruff's formatting and safe fixes
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench: install system-deps ## benchmarks under bench/ (figures printed and written to bench/results/)
	$(PY) -m bench

clean: ## remove the virtualenv, local data and build output
	rm -rf .venv .local spa/dist spa/node_modules test-output
