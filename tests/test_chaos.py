"""The short chaos run: real stack, worker and API SIGKILLed and restarted, SMTP down a while,
and still every expected email exactly once (the full run: `python -m bench.chaos`)."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import ChaosConfig, run_chaos


async def test_exactly_once_under_crashes(tmp_path: Path) -> None:
    config = ChaosConfig(journeys=60, worker_kills=3, api_restarts=1, smtp_outage=3.0)
    report = await run_chaos(config, tmp_path)
    print(report.render())
    assert report.worker_kills == 3 and report.api_restarts == 1
    assert report.expected == 60 // 5 * 3 * 3 + 60 // 5  # 36 carts x 3 emails, 12 x 1
    assert report.delivered == report.expected
    assert report.ok(), report.render()
