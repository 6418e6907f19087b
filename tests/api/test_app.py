"""The API refuses to start on secrets anyone could know (README "Secrets"), as `uvicorn
api.app:app` and as `create_app`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from api.app import create_app
from nudge.settings import Settings, UnsafeSecrets
from support import ROOT, run_nudge


def test_uvicorn_refuses_the_default_secrets(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "uvicorn", "api.app:app", "--app-dir", str(ROOT)]
    ran = run_nudge([*argv, "--port", "0"], tmp_path, NUDGE_API_KEY="")
    assert ran.returncode != 0
    output = ran.stdout + ran.stderr
    assert "Nudge will not start" in output and "Traceback" not in output
    assert "NUDGE_API_KEY is empty: every /v1 route would be open" in output
    assert "NUDGE_SECRET_KEY is a published default" in output
    assert "secrets.token_urlsafe(32)" in output
    assert "Uvicorn running" not in output


def test_create_app_checks_the_secrets_before_anything() -> None:
    with pytest.raises(UnsafeSecrets, match="NUDGE_API_KEY is a published default"):
        create_app(Settings(env="production", secret_key="s" * 32))
    with pytest.raises(UnsafeSecrets, match="NUDGE_API_KEY is empty"):
        create_app(Settings(env="development", api_key=""))
    create_app(Settings(env="production", api_key="k" * 32, secret_key="s" * 32))
    create_app(Settings(env="development"))
