"""Under CI (`CI=true`) a skip is a failure: a green CI means that every test ran.

A test that needs a system tool (Debian's chromium, spamassassin, PostgreSQL...) skips on a
developer's machine that lacks it, saying what is missing; in CI the same skip fails the run, with
the test's name and that reason, instead of passing unseen. `make system-deps` installs the
tools. Loaded by tests/conftest.py (its hooks are imported there), or alone with `-p ci_strict`.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

PREFIX = "skipped under CI=true, where every test must run"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _reason(longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{PREFIX}: {_reason(report.longrepr)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if in_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{PREFIX} (the whole of {report.nodeid}): {_reason(report.longrepr)}"
    return report
