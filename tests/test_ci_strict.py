"""tests/ci_strict.py in a pytest of its own: under CI=true a skip (of a test, by a fixture or of a
whole module) fails the run naming the test and what it lacks; elsewhere it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SKIPPING = """
import pytest

pytestmark = []


@pytest.fixture
def tool():
    pytest.skip("needs Debian's frobnicator at /usr/bin/frobnicator")


@pytest.mark.skipif(True, reason="needs Debian's chromium at /nowhere/chromium")
def test_marked():
    pass


def test_by_a_fixture(tool):
    pass


@pytest.mark.xfail(reason="a known bug, not a skip")
def test_expected_to_fail():
    assert False


def test_that_runs():
    pass


def test_skipping_itself():
    pytest.skip("needs spamassassin on PATH")
"""

SKIPPED_MODULE = """
import pytest

pytest.importorskip("no_such_module_here")
"""


def run(tmp_path: Path, ci: str | None, module: str = SKIPPING) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_it.py").write_text(module)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(TESTS)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "ci_strict",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",
            "-rA",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_under_ci_every_skip_fails_the_run_naming_the_test_and_the_tool(tmp_path: Path) -> None:
    result = run(tmp_path, "true")
    out = result.stdout
    assert result.returncode == 1, out
    prefix = "skipped under CI=true, where every test must run"
    assert (
        f"ERROR test_it.py::test_marked - {prefix}: needs Debian's chromium at /nowhere/chromium"
        in out
    ), out
    assert f"ERROR test_it.py::test_by_a_fixture - {prefix}: needs Debian's frobnicator" in out
    assert "XFAIL test_it.py::test_expected_to_fail" in out
    assert "PASSED test_it.py::test_that_runs" in out
    assert f"FAILED test_it.py::test_skipping_itself - {prefix}: needs spamassassin" in out
    # A marked skip, or one by a fixture, happens while setting a test up: an error of that test.
    assert "1 failed, 1 passed, 1 xfailed, 2 errors" in out.splitlines()[-1], out

    # A module skipped whole is a collection error: the run stops (exit 2) and says why.
    result = run(tmp_path, "true", SKIPPED_MODULE)
    out = result.stdout
    assert result.returncode == 2, out
    assert (
        f"ERROR test_it.py - {prefix} (the whole of test_it.py): could not import "
        "'no_such_module_here'" in out
    ), out


def test_elsewhere_a_skip_stays_a_skip(tmp_path: Path) -> None:
    for ci in (None, "", "false"):
        result = run(tmp_path, ci)
        assert result.returncode == 0, result.stdout
        assert "1 passed, 3 skipped, 1 xfailed" in result.stdout.splitlines()[-1], result.stdout
    result = run(tmp_path, None, SKIPPED_MODULE)
    assert result.returncode == 5, result.stdout  # nothing ran: pytest's "no tests" exit
    assert "1 skipped" in result.stdout.splitlines()[-1], result.stdout
