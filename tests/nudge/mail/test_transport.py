"""Sending through a provider: AUTH over STARTTLS and implicit TLS against a real TLS server on
loopback (aiosmtpd, certificates made here by trustme), the sender's faults, the pool's bound
and the send rate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nudge.mail.render import RenderedEmail
from nudge.mail.smtp import (
    OutgoingMessage,
    SmtpSender,
    Submission,
    build_message,
    sender_from_settings,
)
from nudge.mail.transport import SenderFault
from nudge.settings import Settings
from support import new_email, new_id
from tls_support import (
    PASSWORD,
    USERNAME,
    Certificates,
    ProviderServer,
    certificates,
    provider_server,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["starttls", "tls"])
def server(request: pytest.FixtureRequest, certs: Certificates) -> Iterator[ProviderServer]:
    with provider_server(request.param, certs.leaf("127.0.0.1", "localhost")) as running:
        yield running


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def message(to: str | None = None) -> OutgoingMessage:
    return build_message(
        RenderedEmail(subject="Hello", html="<p>Hi</p>", text="Hi\n"),
        from_email="Store <store@shop.example>",
        to_email=to or new_email(),
        to_name="Ana",
        message_id=f"{new_id('m')}@shop.example",
    )


def sender(
    server: ProviderServer, ca_file: Path | None, password: str = PASSWORD, **kw: object
) -> SmtpSender:
    how = Submission(server.mode, USERNAME, password, ca_file)
    return SmtpSender("127.0.0.1", server.port, 5.0, submission=how, **kw)  # type: ignore[arg-type]


async def test_a_good_login_sends_over_tls(server: ProviderServer, certs: Certificates) -> None:
    settings = Settings(
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_security=server.mode,
        smtp_username=USERNAME,
        smtp_password=PASSWORD,
        smtp_ca_file=certs.ca_file,
    )
    smtp = sender_from_settings(settings)
    sent = message()
    await smtp.send(sent)
    await smtp.close()
    [received] = server.received
    assert received.message_id == sent.message_id
    assert received.login == USERNAME
    assert server.logins == [("PLAIN", True)] or server.logins == [("LOGIN", True)]
    # aiosmtpd marks STARTTLS sessions; an implicit TLS port is TLS from the first byte.
    assert received.tls or server.mode == "tls"


async def test_a_wrong_password_is_the_senders_fault_and_costs_one_login_per_interval(
    server: ProviderServer, certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    smtp = sender(server, certs.ca_file, "wrong-password", fault_backoff=30, clock=clock)
    caplog.set_level(logging.INFO, logger="nudge.mail.smtp")
    with pytest.raises(SenderFault, match="refused the login of AKIANUDGETEST: 535"):
        await smtp.send(message())
    # aiosmtplib tries each mechanism the server offers (PLAIN, LOGIN): one connection's worth.
    tried = len(server.logins)
    # Held back: the next sends fail at once, without another login.
    for _ in range(3):
        with pytest.raises(SenderFault, match="NUDGE_SMTP_PASSWORD"):
            await smtp.send(message())
    assert len(server.logins) == tried
    clock.now += 31  # the next send tries again: still wrong, still logged only once
    with pytest.raises(SenderFault):
        await smtp.send(message())
    assert len(server.logins) == 2 * tried and not any(ok for _, ok in server.logins)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "535" in errors[0].getMessage()

    server.password = "wrong-password"  # the operator fixes it (here: on the server's side)
    clock.now += 31
    sent = message()
    await smtp.send(sent)
    await smtp.close()
    assert smtp.fault is None and server.ids() == [sent.message_id]
    assert any("cleared" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("trusted", [True, False], ids=["other-host", "unknown-ca"])
@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_a_certificate_that_is_not_the_hosts_is_refused(
    certs: Certificates, mode: str, trusted: bool
) -> None:
    leaf = certs.leaf("mail.other.example") if trusted else certs.leaf("127.0.0.1")
    with provider_server(mode, leaf) as server:
        smtp = sender(server, certs.ca_file if trusted else None)
        with pytest.raises(SenderFault, match=r"TLS certificate of 127\.0\.0\.1") as raised:
            await smtp.send(message())
        reason = "mismatch" if trusted else "unable to get local issuer certificate"
        assert reason in str(raised.value)
        # The password never left: no login was even tried.
        assert server.logins == [] and server.received == []


async def test_starttls_is_required_not_hoped_for(certs: Certificates) -> None:
    """A server (or a man in the middle) that does not offer STARTTLS gets no password."""
    with provider_server("none", None) as server:
        smtp = sender(server, certs.ca_file)
        smtp.submission = Submission("starttls", USERNAME, PASSWORD, certs.ca_file)
        with pytest.raises(SenderFault, match="does not offer STARTTLS"):
            await smtp.send(message())
        assert server.logins == [] and server.received == []


async def test_implicit_tls_against_a_starttls_port_says_which_setting(
    certs: Certificates,
) -> None:
    with provider_server("starttls", certs.leaf("127.0.0.1")) as server:
        smtp = SmtpSender(
            "127.0.0.1", server.port, 5.0, submission=Submission("tls", USERNAME, PASSWORD)
        )
        with pytest.raises(SenderFault, match="NUDGE_SMTP_SECURITY"):
            await smtp.send(message())


async def test_connections_are_pooled_kept_alive_and_bounded(
    server: ProviderServer, certs: Certificates
) -> None:
    smtp = sender(server, certs.ca_file, pool_size=2)
    sent = [message() for _ in range(9)]
    await asyncio.gather(*(smtp.send(m) for m in sent[:8]))
    await smtp.send(sent[8])
    await smtp.close()
    assert sorted(server.ids()) == sorted(m.message_id for m in sent)
    # Two connections, each logged in once, carried all nine.
    assert (server.connections, server.peak_connections, len(server.logins)) == (2, 2, 2)


async def test_the_send_rate_is_bounded(server: ProviderServer, certs: Certificates) -> None:
    smtp = sender(server, certs.ca_file, pool_size=4, rate=20)
    await smtp.send(message())  # connected and logged in: what follows is the rate alone
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(smtp.send(message()) for _ in range(6)))
    elapsed = loop.time() - started
    await smtp.close()
    assert len(server.received) == 7
    # Sends at 20/s are 50 ms apart: the six after the first take at least 300 ms, less the
    # time the first one's reply took to arrive.
    assert elapsed >= 0.25


class Recorder:
    """An `on_status` that keeps what it was told (the worker's writes it to the database)."""

    def __init__(self, fail: bool = False) -> None:
        self.told: list[str | None] = []
        self.fail = fail

    async def __call__(self, fault: SenderFault | None) -> None:
        self.told.append(fault.summary if fault is not None else None)
        if self.fail:
            raise OSError("the database is down")


LOGIN_FAULT = "535 authentication failed: check NUDGE_SMTP_USERNAME / NUDGE_SMTP_PASSWORD"


async def test_the_sender_tells_its_state_on_a_change_and_a_retry_never_per_message(
    server: ProviderServer, certs: Certificates
) -> None:
    clock, status = Clock(), Recorder()
    smtp = sender(
        server, certs.ca_file, "wrong-password", fault_backoff=30, clock=clock, on_status=status
    )
    with pytest.raises(SenderFault) as raised:
        await smtp.send(message())
    # What /healthz may show: no host, no username, nothing the server said but its code.
    summary = raised.value.summary
    assert summary == LOGIN_FAULT
    assert USERNAME not in summary and "127.0.0.1" not in summary and "wrong" not in summary
    for _ in range(3):  # held back: nothing new to tell
        with pytest.raises(SenderFault):
            await smtp.send(message())
    assert status.told == [LOGIN_FAULT]
    clock.now += 31  # the retry finds it again
    with pytest.raises(SenderFault):
        await smtp.send(message())
    assert status.told == [LOGIN_FAULT, LOGIN_FAULT]

    server.password = "wrong-password"
    clock.now += 31
    for _ in range(3):
        await smtp.send(message())
    await smtp.close()
    assert status.told == [LOGIN_FAULT, LOGIN_FAULT, None]


async def test_a_sender_that_logs_in_tells_so_once_and_survives_a_failing_report(
    server: ProviderServer, certs: Certificates
) -> None:
    status = Recorder()
    smtp = sender(server, certs.ca_file, pool_size=2, on_status=status)
    # A burst of first connections (a worker's start clears a fault left by its last run).
    await asyncio.gather(*(smtp.send(message()) for _ in range(4)))
    await smtp.close()
    assert status.told == [None] and server.connections == 2

    failing = Recorder(fail=True)
    smtp = sender(server, certs.ca_file, on_status=failing)
    await smtp.send(message())  # the database is down: the send is not
    failing.fail = False
    await smtp.close()
    await smtp.send(message())  # a new connection tells it again, since it could not
    await smtp.send(message())
    await smtp.close()
    assert failing.told == [None, None] and len(server.received) == 7
