"""The short chaos run: real stack, worker and API SIGKILLed and restarted, SMTP down a while,
and still every expected email exactly once (the full run: `python -m bench.chaos`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, run_chaos
from conftest import CI_POSTGRES_URL


async def test_exactly_once_under_crashes(tmp_path: Path) -> None:
    config = ChaosConfig(journeys=60, worker_kills=3, api_restarts=1, smtp_outage=3.0)
    report = await run_chaos(config, tmp_path)
    print(report.render())
    assert report.worker_kills == 3 and report.api_restarts == 1
    assert report.expected == 60 // 5 * 3 * 3 + 60 // 5  # 36 carts x 3 emails, 12 x 1
    assert report.delivered == report.expected
    assert report.ok(), report.render()


async def test_two_workers_and_two_apis_on_postgresql(tmp_path: Path) -> None:
    """The production topology on one machine: two worker processes and two API processes on
    one Temporal and one PostgreSQL, clients spread over the APIs, each side killed at random."""
    base = os.environ.get("NUDGE_TEST_POSTGRES_URL") or (
        CI_POSTGRES_URL if os.environ.get("CI") else None
    )
    if not base:
        pytest.skip("PostgreSQL tests need NUDGE_TEST_POSTGRES_URL (always run in CI)")
    config = ChaosConfig(
        journeys=40,
        worker_kills=3,
        api_restarts=2,
        smtp_outage=0,
        workers=2,
        apis=2,
        database="postgres",
        postgres_url=base,
    )
    report = await run_chaos(config, tmp_path)
    print(report.render())
    assert (report.worker_kills, report.api_restarts) == (3, 2)
    assert report.expected == 40 // 5 * 3 * 3 + 40 // 5
    assert report.delivered == report.expected
    assert report.ok(), report.render()
    # Both workers and both APIs ran, each with its own log.
    logs = {path.name for path in tmp_path.glob("*.log")}
    assert logs >= {"worker0.log", "worker1.log", "api0.log", "api1.log"}
