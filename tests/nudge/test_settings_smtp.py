"""Settings: SMTP submission. A password never crosses the network in clear, and a worker with
such a configuration refuses to start, saying what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from nudge.settings import ROOT, Settings, is_loopback

SES = "email-smtp.eu-west-1.amazonaws.com"


def test_plaintext_auth_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ValidationError, match=f"in clear to {SES}.*NUDGE_SMTP_SECURITY=starttls"):
        Settings(smtp_host=SES, smtp_username="AKIA", smtp_password="x", smtp_security="none")


def test_a_remote_host_defaults_to_starttls_and_loopback_to_none() -> None:
    remote = Settings(smtp_host=SES, smtp_port=587, smtp_username="AKIA", smtp_password="pw-3141")
    assert remote.smtp_tls_mode == "starttls"
    assert "pw-3141" not in repr(remote)  # the password is a SecretStr
    local = Settings(smtp_host="::1", smtp_username="u", smtp_password="p", smtp_security="none")
    assert local.smtp_tls_mode == "none"
    assert Settings().smtp_tls_mode == "none"  # the mail catcher


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True), ("[::1]", True),
     ("10.0.0.5", False), ("smtp.sendgrid.net", False), ("localhost.evil.example", False)],
)  # fmt: skip
def test_loopback_is_an_address_or_localhost_never_a_lookup(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_username_and_password_come_together_and_the_ca_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set together"):
        Settings(smtp_username="AKIA")
    with pytest.raises(ValidationError, match="NUDGE_SMTP_CA_FILE"):
        Settings(smtp_ca_file=tmp_path / "missing.pem")


def test_the_worker_refuses_to_start_with_a_password_in_clear(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    env |= {
        "NUDGE_SMTP_HOST": SES,
        "NUDGE_SMTP_USERNAME": "AKIA",
        "NUDGE_SMTP_PASSWORD": "secret-password",
        "NUDGE_SMTP_SECURITY": "none",
        "NUDGE_ENV": "development",  # so that only the SMTP setting is at fault
        # Never reached: the settings fail first.
        "NUDGE_TEMPORAL_ADDRESS": "127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "in clear to email-smtp.eu-west-1.amazonaws.com" in done.stderr
    assert "secret-password" not in done.stderr + done.stdout
