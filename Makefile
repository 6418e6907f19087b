# Nudge: two commands do everything on a fresh machine with Python 3.11+.
#   make run   - the whole stack on embedded defaults (Temporal dev server + UI, worker, API,
#                mail catcher, SQLite); Ctrl-C stops it all
#   make test  - lint, types and the whole test suite on real parts

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& command -v $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint format clean chaos bench system-deps spamcheck test-clock fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Nudge needs Python 3.11 or newer (python3.11+ on PATH)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: venv
	$(BIN)/python -m nudge.dev.devstack

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports --no-cache

test: system-deps lint
	$(BIN)/pytest

# Debian packages the tests run for real (one list, for every feature that needs one; each
# package's command, in the same order, tells whether it is there):
#   spamassassin - scores the shipped templates (tests/nudge/test_spamcheck.py, make spamcheck)
#   chromium     - the dashboard in a real browser (tests/api/test_dashboard_browser.py)
#   faketime     - libfaketime, which moves the clock for `make test-clock`
# Installed when missing, if we can (root + apt-get). Under CI=true a test whose tool is missing
# fails, never skips (tests/ci_strict.py).
SYSTEM_PACKAGES := spamassassin chromium faketime
SYSTEM_COMMANDS := spamassassin chromium faketime

system-deps:
	@missing=""; set -- $(SYSTEM_COMMANDS); for pkg in $(SYSTEM_PACKAGES); do \
		command -v "$$1" >/dev/null 2>&1 || missing="$$missing $$pkg"; shift; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else \
			echo "missing Debian packages:$$missing - install them (sudo apt-get install$$missing)"; \
			exit 1; \
		fi; \
	fi

# The date-touching tests under libfaketime at each instant of tests/clock_matrix.py (every
# weekday, the DST changes of Lisbon and New York, 23:59 UTC, 31 December, 29 February, machine
# timezones other than UTC): one line per instant, fails if any fails. Only some instants, or
# other tests: make test-clock CLOCK_ARGS='--only fri,sat-2359 -- tests/nudge'
test-clock: system-deps venv
	$(BIN)/python tests/clock_matrix.py $(CLOCK_ARGS)

# SpamAssassin scores (local rules) of every shipped template; fails above 2.0.
spamcheck: venv system-deps
	$(BIN)/python -m nudge.dev.spamcheck

# The long fuzz run (Schemathesis over the OpenAPI spec, in-process); a short one (300 requests)
# is part of `make test`. NUDGE_FUZZ_EXAMPLES=50000 make fuzz for longer.
fuzz: venv
	NUDGE_FUZZ_EXAMPLES=$${NUDGE_FUZZ_EXAMPLES:-10000} $(BIN)/pytest -q -s tests/api/test_fuzz.py

# The full chaos run (1000 journeys, 10 worker kills); a short one is part of `make test`.
chaos: venv
	$(BIN)/python -m bench.chaos

# Every benchmark at its default (small) size; each also runs alone: python -m bench.<name>
bench: venv
	$(BIN)/python -m bench.journeys
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.email_build
	$(BIN)/python -m bench.parked

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache build/screenshots build/clock
