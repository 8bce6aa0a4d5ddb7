# pg-nats-bridge developer commands. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-browser install-promtool test test-slow test-unit test-e2e lint format clean bench \
	chaos run lock docs docs-serve rules

install: $(STAMP)

# Every dependency at the version and hash requirements-dev.lock names (the Dockerfile installs
# requirements.lock, the same versions without the dev tools); then the project itself, its
# compiled hot path (shared/compiled) built by the locked Cython and setuptools where a C
# compiler is (without one, the pure-Python path: `bridge --version` says which runs).
# Re-installs only when the lock, the project's metadata or the compiled source changed.
$(STAMP): pyproject.toml setup.py requirements-dev.lock $(wildcard shared/compiled/*.pyx shared/compiled/*.pxd)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve both lock files from pyproject.toml (after changing a dependency there; UPGRADE=pkg
# moves one package to its newest release the bounds allow, UPGRADE=--all everything).
LOCK = $(BIN)/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 \
	--quiet $(if $(UPGRADE),$(if $(filter --all,$(UPGRADE)),--upgrade,--upgrade-package $(UPGRADE)))
lock: install
	$(LOCK) -o requirements.lock
	$(LOCK) --extra dev -o requirements-dev.lock
	$(BIN)/uv pip compile requirements-build.in --generate-hashes --universal --python-version 3.11 \
		--quiet -o requirements-build.lock

# The status-page test renders the admin page in Debian's Chromium (installed here, as root,
# when missing; the test itself installs nothing).
install-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	  else echo "chromium missing: install Debian's chromium package for the status-page test" >&2; fi; }

# The suite on WORKERS pytest-xdist workers (each with its own PostgreSQL and nats-server): most
# of an e2e test's time is waiting on servers and subprocesses, so 3 workers on 2 cores take
# ~60% of the serial time. WORKERS=0 runs it in one process.
WORKERS ?= 3
test: install install-browser docs rules
	$(BIN)/python -m pytest -n $(WORKERS) $(PYTEST_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/, with the NATS interface's AsyncAPI
# document generated from the contract (docs/asyncapi.json); any broken link or missing page fails.
docs: install
	$(BIN)/python -m pg_nats_bridge.contract.asyncapi docs/asyncapi.json
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve

# The Prometheus alert rules: valid (promtool check rules) and firing when they should
# (promtool test rules, deploy/prometheus/alerts.test.yaml).
rules: install-promtool
	promtool check config deploy/prometheus/prometheus.yml
	cd deploy/prometheus && promtool test rules alerts.test.yaml

# promtool comes with Debian's prometheus package (installed here, as root, when missing).
install-promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus) >/dev/null; \
	  else echo "promtool missing: install Debian's prometheus package" >&2; exit 1; fi; }

# Cases marked slow (minutes of waiting for one more case of what make test covers).
test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: install
	$(BIN)/python -m pytest -n $(WORKERS) tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis site

# Every figure in one run (drain, live latency at 1k and 5k tx/s, snapshot, 1M-row RSS),
# printed and written to bench-results.json.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# The chaos soak for longer than make test's 60 s (CHAOS_ARGS="--seconds 600 --seed N" replays
# a run): faults every few seconds under a random workload; exit 1 on any loss or duplicate.
chaos: install
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

# Everything in one command: embedded PostgreSQL and nats-server (data in .bridge/), the three
# services supervised, the admin on :8080. Ctrl-C stops it all.
run: install
	$(BIN)/bridge dev $(RUN_ARGS)
