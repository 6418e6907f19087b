"""The tests with the clock moved: `make test-clock` (or `python tests/clock_matrix.py`).

A test that holds only on some days (a weekday written in Portuguese, a month's length, a daylight
saving change, the date in UTC against the date in Lisbon, the machine's timezone) passes on the
day it is written and fails on another. This runs pytest under libfaketime (Debian's `faketime`)
at each instant of INSTANTS, with the machine's timezone (TZ) of that instant, and prints one line
per instant; it exits 1 if any run failed.

How the clock is moved: `faketime -f "@<epoch>"` (with FAKETIME_FMT=%s, so the instant is the
same whatever TZ is) starts the clock at that instant and lets it tick, so a run that starts at
23:59 crosses midnight while it runs. The faked clock is preloaded into pytest and so into every
process it starts, which all share it (FAKETIME_SHARED, set by `faketime`): the Temporal test
server (whose time-skipping clock starts at the wall clock), Chromium, SpamAssassin. Monotonic
clocks move by the same offset and tick at the real rate: leaving them alone
(FAKETIME_DONT_FAKE_MONOTONIC=1) breaks Python's time.sleep, whose absolute-deadline
clock_nanosleep then fails with EINVAL under libfaketime 0.9.10. PostgreSQL is a server already
running, on the real clock: Nudge never asks a database for the time (every timestamp is written
from Python).

Usage:
    python tests/clock_matrix.py                     # every instant, the date-touching tests
    python tests/clock_matrix.py --only fri,sat-2359 # some instants (names: --list)
    python tests/clock_matrix.py -- tests            # other tests: the whole suite
    python tests/clock_matrix.py -- tests -k coupon  # anything after -- goes to pytest
    python tests/clock_matrix.py -- -k "not postgres"  # the date-touching tests, SQLite only

CI=true is the default (PostgreSQL tests run, and a skip fails). Each run's output is kept in
build/clock/<instant>.log.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "build" / "clock"

# The tests that touch dates (found by grepping for the clock: utcnow, datetime.now, time.time,
# get_current_time, days_ago, quiet_window, local times): the domain (segments' windows, coupons'
# expiry, loyalty, metrics, dates rendered in the contact's locale and timezone, SpamAssassin's
# date rules), the send activity, the API routes that stamp or compare times (events, tracking,
# segments, the dashboard's figures), and the flows that wait on the clock or read it (local-time
# waits and smart sending, quiet hours, welcome, win-back, sunset, the segment refresh). The
# other flow tests run the same toolkit; the whole suite is `-- tests` (4 to 8 minutes an
# instant on 2 cores).
DATE_TOUCHING = (
    "tests/nudge",
    "tests/activities",
    "tests/api/test_events.py",
    "tests/api/test_tracking.py",
    "tests/api/test_segments_api.py",
    "tests/api/test_dashboard_browser.py",
    "tests/workflows/test_toolkit.py",
    "tests/workflows/test_cart_abandonment.py",
    "tests/workflows/test_welcome.py",
    "tests/workflows/test_winback.py",
    "tests/workflows/test_sunset.py",
    "tests/workflows/test_segment_refresh.py",
)


@dataclass(frozen=True)
class Instant:
    name: str
    at: datetime  # UTC
    tz: str  # the machine's timezone (TZ) for this run
    why: str


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


INSTANTS = (
    # Every weekday (the week after the Friday this matrix was written for).
    Instant("mon", utc("2026-12-07 10:00"), "UTC", "Monday"),
    Instant("tue", utc("2026-12-08 10:00"), "UTC", "Tuesday"),
    Instant("wed", utc("2026-12-09 10:00"), "UTC", "Wednesday"),
    Instant("thu", utc("2026-12-10 10:00"), "UTC", "Thursday"),
    Instant("fri", utc("2026-12-11 10:00"), "UTC", "Friday"),
    Instant("sat", utc("2026-12-12 10:00"), "UTC", "Saturday"),
    Instant("sun", utc("2026-12-13 10:00"), "UTC", "Sunday"),
    # Midnight UTC, crossed while the tests run.
    Instant("fri-2359", utc("2026-12-04 23:59"), "UTC", "Friday 23:59 UTC, into Saturday"),
    Instant("sat-2359", utc("2026-12-05 23:59"), "UTC", "Saturday 23:59 UTC, into Sunday"),
    Instant("dec31-2359", utc("2026-12-31 23:59"), "UTC", "31 December 23:59 UTC, into 2027"),
    Instant("feb29", utc("2028-02-29 12:00"), "UTC", "29 February 2028 (leap day)"),
    Instant("feb29-2359", utc("2028-02-29 23:59"), "UTC", "29 February 23:59 UTC, into March"),
    # Daylight saving changes, a minute before and a minute after.
    Instant(
        "lisbon-spring-before",
        utc("2027-03-28 00:59"),
        "Europe/Lisbon",
        "Lisbon 00:59 WET, 1 min to DST",
    ),
    Instant(
        "lisbon-spring-after",
        utc("2027-03-28 01:01"),
        "Europe/Lisbon",
        "Lisbon 02:01 WEST, just past",
    ),
    Instant(
        "lisbon-autumn-before",
        utc("2027-10-31 00:59"),
        "Europe/Lisbon",
        "Lisbon 01:59 WEST, 1 min to WET",
    ),
    Instant(
        "lisbon-autumn-after", utc("2027-10-31 01:01"), "Europe/Lisbon", "Lisbon 01:01 WET (again)"
    ),
    Instant(
        "ny-spring-before",
        utc("2027-03-14 06:59"),
        "America/New_York",
        "NY 01:59 EST, 1 min to DST",
    ),
    Instant(
        "ny-spring-after", utc("2027-03-14 07:01"), "America/New_York", "NY 03:01 EDT, just past"
    ),
    Instant(
        "ny-autumn-before",
        utc("2027-11-07 05:59"),
        "America/New_York",
        "NY 01:59 EDT, 1 min to EST",
    ),
    Instant("ny-autumn-after", utc("2027-11-07 06:01"), "America/New_York", "NY 01:01 EST (again)"),
    # Machines whose timezone is not UTC, at a moment when their date is not UTC's.
    Instant("tz-new-york", utc("2026-12-05 02:30"), "America/New_York", "Fri 21:30 local, Sat UTC"),
    Instant("tz-kolkata", utc("2026-12-04 20:00"), "Asia/Kolkata", "Sat 01:30 local, Fri UTC"),
    Instant(
        "tz-kiritimati", utc("2026-12-04 11:00"), "Pacific/Kiritimati", "Sat 01:00 local (UTC+14)"
    ),
)

SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
PROBE = "import datetime as d; n = d.datetime.now(); print(n.astimezone().strftime('%a %Y-%m-%d %H:%M %Z'))"


def faked(instant: Instant) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CI", "true")
    env.update(
        TZ=instant.tz,
        FAKETIME_FMT="%s",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def command(instant: Instant, argv: list[str]) -> list[str]:
    return ["faketime", "-f", f"@{int(instant.at.timestamp())}", *argv]


def counts(output: str) -> dict[str, int]:
    """pytest's closing line ("3 failed, 700 passed, 1 skipped in 200.01s") as counts."""
    found: dict[str, int] = {}
    for line in reversed(output.splitlines()):
        if " in " in line and SUMMARY.search(line):
            for n, what in SUMMARY.findall(line):
                found["errors" if what.startswith("error") else what] = int(n)
            break
    return found


def run(instant: Instant, pytest_args: list[str]) -> bool:
    env = faked(instant)
    local = subprocess.run(
        command(instant, [sys.executable, "-c", PROBE]),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    started = time.monotonic()
    result = subprocess.run(
        command(
            instant,
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
        ),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.monotonic() - started
    log = LOGS / f"{instant.name}.log"
    log.write_text(result.stdout)
    found = counts(result.stdout)
    ok = result.returncode == 0 and not found.get("failed") and not found.get("errors")
    figures = ", ".join(f"{found.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped"))
    print(
        f"{'PASS' if ok else 'FAIL'}  {instant.name:<22} {instant.at:%Y-%m-%d %H:%M} UTC"
        f"  TZ={instant.tz:<18} local {local:<28} {figures}  ({elapsed:.0f} s, exit "
        f"{result.returncode}, {log.relative_to(ROOT)})  {instant.why}",
        flush=True,
    )
    if not ok:
        for line in result.stdout.splitlines():
            if line.startswith(("FAILED ", "ERROR ")):
                print(f"      {line}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated instant names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the instants and exit")
    parser.add_argument("pytest_args", nargs="*", help="after --: tests and pytest options")
    args = parser.parse_args()
    if args.list:
        for i in INSTANTS:
            print(f"{i.name:<22} {i.at:%Y-%m-%d %H:%M} UTC  TZ={i.tz:<18} {i.why}")
        return 0
    chosen = list(INSTANTS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {i.name for i in INSTANTS})
        if unknown:
            parser.error(f"unknown instants: {', '.join(unknown)} (see --list)")
        chosen = [i for i in INSTANTS if i.name in names]
    if shutil.which("faketime") is None:
        print("needs Debian's faketime (make system-deps installs it)", file=sys.stderr)
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    # Tests named after -- replace the date-touching ones; options alone (-k, -x) go with them.
    names_tests = any((ROOT / a.split("::")[0]).exists() for a in args.pytest_args)
    pytest_args = args.pytest_args if names_tests else [*DATE_TOUCHING, *args.pytest_args]
    print(f"pytest {' '.join(pytest_args)} at {len(chosen)} instants", flush=True)
    failed = [i.name for i in chosen if not run(i, pytest_args)]
    if failed:
        print(f"clock matrix: {len(failed)} of {len(chosen)} instants failed: {', '.join(failed)}")
        return 1
    print(f"clock matrix: all {len(chosen)} instants passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
