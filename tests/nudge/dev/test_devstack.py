"""`make run`'s mail catcher stands in only for a loopback SMTP host whose port is free, and the
stack says where mail goes."""

from __future__ import annotations

import socket

from nudge.dev.devstack import MailPlan, banner, mail_plan
from nudge.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_free_loopback_port_gets_the_mail_catcher() -> None:
    plan = mail_plan(Settings(smtp_host="127.0.0.1", smtp_port=free_port()))
    assert plan.catcher and "mail catcher http://localhost:8025" in plan.where


def test_something_already_listening_locally_gets_the_mail() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        plan = mail_plan(Settings(smtp_host="localhost", smtp_port=port))
    assert plan == MailPlan(
        False, f"SMTP localhost:{port}: already listening there, so no mail catcher"
    )


def test_a_real_server_gets_the_mail_and_no_catcher_starts() -> None:
    # Port 1025 may well be free here: a remote host never gets a catcher, nor needs the port.
    settings = Settings(smtp_host="email-smtp.eu-west-1.amazonaws.com", smtp_port=587)
    plan = mail_plan(settings)
    assert not plan.catcher
    assert (
        plan.where
        == "SMTP email-smtp.eu-west-1.amazonaws.com:587 (starttls): real mail, no catcher"
    )
    assert plan.where in banner("key", plan)
