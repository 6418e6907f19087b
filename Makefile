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

.PHONY: venv run test lint format clean chaos bench system-deps spamcheck

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

# Debian packages the tests run for real (one list, for every feature that needs one):
# spamassassin scores the shipped templates. Installed when missing, if we can (root + apt-get).
SYSTEM_PACKAGES := spamassassin
SYSTEM_COMMANDS := spamassassin

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

# SpamAssassin scores (local rules) of every shipped template; fails above 2.0.
spamcheck: venv system-deps
	$(BIN)/python -m nudge.dev.spamcheck

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
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
