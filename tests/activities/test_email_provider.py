"""The send activity against a provider-like server (AUTH over STARTTLS or implicit TLS, on
loopback, certificates by trustme): the sender's faults never mark a message failed, and the
delivery protocol (README "Delivery guarantees") holds over TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities
from nudge.journeys.contracts import SendEmailInput
from nudge.mail.smtp import (
    Commit,
    DotNotSent,
    OutgoingMessage,
    SmtpSender,
    Submission,
    _TwoPhaseSMTP,
)
from nudge.settings import Settings
from nudge.storage.db import create_engine, session_maker
from nudge.storage.models import Message
from support import Crash, CrashAtCommit, cart_1_job
from tls_support import (
    PASSWORD,
    USERNAME,
    Certificates,
    ProviderServer,
    certificates,
    provider_server,
)

Sessions = async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture(loop_scope="session")
async def sessions(db_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(db_url)
    yield session_maker(engine)
    await engine.dispose()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["starttls", "tls"])
def server(request: pytest.FixtureRequest, certs: Certificates) -> Iterator[ProviderServer]:
    with provider_server(request.param, certs.leaf("127.0.0.1")) as running:
        yield running


@pytest.fixture
def settings(db_url: str, server: ProviderServer, certs: Certificates) -> Settings:
    return Settings(
        database_url=db_url,
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_security=server.mode,
        smtp_username=USERNAME,
        smtp_password=PASSWORD,
        smtp_ca_file=certs.ca_file,
        from_email="Nudge Test Store <store@shop.example>",
        quiet_hours="",
    )


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(settings: Settings, password: str = PASSWORD, **kw: object) -> SmtpSender:
    how = Submission(settings.smtp_tls_mode, USERNAME, password, settings.smtp_ca_file)
    return SmtpSender(settings.smtp_host, settings.smtp_port, 5.0, submission=how, **kw)  # type: ignore[arg-type]


async def row(sessions: Sessions, job: SendEmailInput) -> Message:
    async with sessions() as session:
        found = await session.scalar(select(Message).where(Message.workflow_id == job.workflow_id))
    assert found is not None
    return found


async def test_a_wrong_password_retries_and_marks_nothing_failed(
    sessions: Sessions, settings: Settings, server: ProviderServer
) -> None:
    clock = Clock()
    smtp = provider(settings, "wrong-password", fault_backoff=60, clock=clock)
    activities = EmailActivities(sessions, smtp, settings)
    job = await cart_1_job(sessions)

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.send_email, job)
    assert raised.value.type == "SmtpSenderFault" and not raised.value.non_retryable
    assert "NUDGE_SMTP_PASSWORD" in str(raised.value)
    queued = await row(sessions, job)
    assert (queued.status, queued.reason, queued.attempts) == ("queued", None, 1)
    assert "535" in (queued.error or "")

    # Retries while the fault stands fail before the message log is touched.
    for _ in range(5):
        with pytest.raises(ApplicationError, match="NUDGE_SMTP_PASSWORD"):
            await ActivityEnvironment().run(activities.send_email, job)
    assert (await row(sessions, job)).attempts == 1

    server.password = "wrong-password"  # fixed; the next retry after the backoff delivers
    clock.now += 61
    result = await ActivityEnvironment().run(activities.send_email, job)
    await smtp.close()
    sent = await row(sessions, job)
    assert (result.status, sent.status, sent.attempts) == ("sent", "sent", 2)
    assert server.ids() == [sent.message_id]


class DropMidData(SmtpSender):
    """The server drops the connection in the middle of DATA; the worker commits `sent` all
    the same (the drop reached it only just before its commit), then must not write the dot."""

    clients: list[_TwoPhaseSMTP]

    async def _connect(self) -> _TwoPhaseSMTP:
        client = await super()._connect()
        self.clients = [*getattr(self, "clients", []), client]
        return client

    async def send(
        self, message: OutgoingMessage | EmailMessage, *, commit: Commit | None = None
    ) -> None:
        async def late_commit() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while not self.server.dropped.is_set() or self.clients[-1].is_connected:
                assert loop.time() < deadline, "the server never dropped the connection"
                await asyncio.sleep(0.01)
            assert commit is not None
            await commit()

        await super().send(message, commit=late_commit)

    server: ProviderServer


async def test_a_connection_dropped_mid_data_over_tls_is_resent_exactly_once(
    sessions: Sessions, settings: Settings, server: ProviderServer
) -> None:
    job = await cart_1_job(sessions)
    dropping = DropMidData(
        settings.smtp_host,
        settings.smtp_port,
        5.0,
        submission=Submission(server.mode, USERNAME, PASSWORD, settings.smtp_ca_file),
    )
    dropping.server = server
    server.drop_data = 1
    with pytest.raises(DotNotSent):
        await ActivityEnvironment().run(
            EmailActivities(sessions, dropping, settings).send_email, job
        )
    undone = await row(sessions, job)
    assert (undone.status, undone.attempts, undone.sent_at) == ("queued", 1, None)
    await server.wait_idle()
    assert server.received == []

    smtp = provider(settings)
    result = await ActivityEnvironment().run(
        EmailActivities(sessions, smtp, settings).send_email, job
    )
    await smtp.close()
    sent = await row(sessions, job)
    assert (result.status, sent.status, sent.attempts) == ("sent", "sent", 2)
    assert server.ids() == [sent.message_id]


async def test_a_crash_before_the_final_dot_over_tls_loses_and_duplicates_nothing(
    sessions: Sessions, settings: Settings, server: ProviderServer
) -> None:
    job = await cart_1_job(sessions)
    how = Submission(server.mode, USERNAME, PASSWORD, settings.smtp_ca_file)
    crashing = CrashAtCommit(settings.smtp_host, settings.smtp_port, 5.0, submission=how)
    with pytest.raises(Crash):
        await ActivityEnvironment().run(
            EmailActivities(sessions, crashing, settings).send_email, job
        )
    assert (await row(sessions, job)).status == "sending"
    await server.wait_idle()  # the server saw the TLS connection end without the final dot
    assert server.received == []

    smtp = provider(settings)
    result = await ActivityEnvironment().run(
        EmailActivities(sessions, smtp, settings).send_email, job
    )
    await smtp.close()
    sent = await row(sessions, job)
    assert (result.status, sent.status, sent.attempts) == ("sent", "sent", 2)
    assert server.ids() == [sent.message_id]


async def test_a_server_that_wants_a_login_it_did_not_get_fails_nothing(
    sessions: Sessions, settings: Settings, server: ProviderServer
) -> None:
    """No credentials: the server answers MAIL FROM with 530. The sender's fault again."""
    how = Submission(server.mode, ca_file=settings.smtp_ca_file)
    smtp = SmtpSender(settings.smtp_host, settings.smtp_port, 5.0, submission=how)
    job = await cart_1_job(sessions)
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(EmailActivities(sessions, smtp, settings).send_email, job)
    await smtp.close()
    assert raised.value.type == "SmtpSenderFault" and not raised.value.non_retryable
    assert "530" in str(raised.value)
    queued = await row(sessions, job)
    assert (queued.status, queued.reason) == ("queued", None)
    assert server.received == []
