"""`python worker.py` refuses to start on secrets anyone could know (README "Secrets")."""

from __future__ import annotations

import sys
from pathlib import Path

from support import ROOT, run_nudge


def test_the_worker_refuses_the_default_secrets(tmp_path: Path) -> None:
    ran = run_nudge([sys.executable, str(ROOT / "worker.py")], tmp_path)
    assert ran.returncode == 1
    assert "Nudge will not start" in ran.stderr and "Traceback" not in ran.stderr
    assert "NUDGE_API_KEY is a published default" in ran.stderr
    assert "NUDGE_SECRET_KEY is a published default" in ran.stderr
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in ran.stderr


def test_the_worker_refuses_webhooks_without_their_own_secret(tmp_path: Path) -> None:
    ran = run_nudge(
        [sys.executable, str(ROOT / "worker.py")],
        tmp_path,
        NUDGE_API_KEY="k" * 32,
        NUDGE_SECRET_KEY="s" * 32,
        NUDGE_WEBHOOKS='{"sms": "https://sms.example/hook"}',
    )
    assert ran.returncode == 1
    assert "NUDGE_WEBHOOK_SECRET is not set" in ran.stderr
    assert "NUDGE_API_KEY" not in ran.stderr and "NUDGE_SECRET_KEY is" not in ran.stderr
