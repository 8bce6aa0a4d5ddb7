# pg-nats-bridge developer commands. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-browser test test-unit test-e2e lint format clean bench chaos run

install: $(STAMP)

# Re-installs only when the project's metadata changed since the last install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The status-page test renders the admin page in Debian's Chromium (installed here, as root,
# when missing; the test itself installs nothing).
install-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	  else echo "chromium missing: install Debian's chromium package for the status-page test" >&2; fi; }

test: install install-browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: install
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

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
