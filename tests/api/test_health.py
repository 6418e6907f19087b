"""`GET /healthz` says what the worker's sender found (README "Sending through a provider"): the
worker as `python worker.py` wires it (`email_activities`, `check_smtp`) against a provider-like
server (aiosmtpd, AUTH over STARTTLS, trustme certificates), the API reads it from the database.
Always 200, never a secret, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities
from api.app import create_app
from conftest import make_settings
from nudge.dev.mailcatcher import MailCatcher
from nudge.journeys.contracts import SendEmailInput
from nudge.settings import Settings
from nudge.storage.db import create_engine, session_maker
from nudge.storage.models import Message, SenderStatus, utcnow
from nudge.storage.sender_status import record_fault
from support import cart_1_job
from tls_support import USERNAME, Certificates, certificates, provider_server
from worker import check_smtp, email_activities

Sessions = async_sessionmaker[AsyncSession]
LOGIN_FAULT = "535 authentication failed: check NUDGE_SMTP_USERNAME / NUDGE_SMTP_PASSWORD"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return certificates(tmp_path_factory.mktemp("tls"))


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def api(settings: Settings, temporal: Client) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, temporal)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://nudge") as http,
    ):
        http.app = app  # type: ignore[attr-defined]
        yield http


async def status_row(sessions: Sessions, task_queue: str) -> SenderStatus | None:
    async with sessions() as session:
        return await session.get(SenderStatus, task_queue)


async def message_row(sessions: Sessions, job: SendEmailInput) -> Message:
    async with sessions() as session:
        found = await session.scalar(select(Message).where(Message.workflow_id == job.workflow_id))
    assert found is not None
    return found


async def send(email: EmailActivities, job: SendEmailInput) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(email.send_email, job)
    assert raised.value.type == "SmtpSenderFault" and not raised.value.non_retryable
    return raised.value


async def test_a_wrong_password_shows_on_healthz_until_a_send_gets_through(
    db_url: str, temporal: Client, mailcatcher: MailCatcher, certs: Certificates
) -> None:
    with provider_server("starttls", certs.leaf("127.0.0.1")) as server:
        settings = make_settings(
            db_url,
            mailcatcher,
            smtp_port=server.port,
            smtp_security="starttls",
            smtp_username=USERNAME,
            smtp_password="wrong-password",
            smtp_ca_file=certs.ca_file,
        )
        engine = create_engine(db_url)
        sessions = session_maker(engine)
        email = email_activities(settings, engine)  # the worker's own wiring
        clock = Clock()
        email.sender.clock = clock
        async with api(settings, temporal) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}

            await check_smtp(email.sender)  # the worker's start: the login is refused
            health = await http.get("/healthz")
            assert health.status_code == 200
            body = health.json()
            assert (body["status"], body["smtp"], body["stale"]) == ("degraded", LOGIN_FAULT, False)
            for secret in ("wrong-password", USERNAME, "127.0.0.1"):
                assert secret not in health.text
            row = await status_row(sessions, settings.task_queue)
            assert row is not None and row.worker == f"{os.getpid()}@{socket.gethostname()}"
            assert "refused the login of AKIANUDGETEST: 535" in row.detail
            assert "wrong-password" not in row.detail
            since = row.since

            # Sends are retried (Temporal retries the activity); none marks the message failed.
            job = await cart_1_job(sessions)
            clock.now += 31  # this one tries to log in again
            assert "NUDGE_SMTP_PASSWORD" in str(await send(email, job))
            for _ in range(3):  # held back: fail at once, without a login or a write
                await send(email, job)
            queued = await message_row(sessions, job)
            assert (queued.status, queued.reason, queued.attempts) == ("queued", None, 1)
            again = await status_row(sessions, settings.task_queue)
            assert again is not None and again.since == since and again.checked_at >= since
            assert (await http.get("/healthz")).json()["since"] == body["since"]

            server.password = "wrong-password"  # fixed; the next retry after the backoff delivers
            clock.now += 31
            result = await ActivityEnvironment().run(email.send_email, job)
            await email.sender.close()
            sent = await message_row(sessions, job)
            assert (result.status, sent.status, sent.attempts) == ("sent", "sent", 2)
            assert server.ids() == [sent.message_id]
            assert await status_row(sessions, settings.task_queue) is None
            assert (await http.get("/healthz")).json() == {"status": "ok"}
        await engine.dispose()


async def test_a_fault_no_worker_found_again_is_stale_and_the_probe_never_fails(
    db_url: str, temporal: Client, mailcatcher: MailCatcher
) -> None:
    settings = make_settings(db_url, mailcatcher)
    engine = create_engine(db_url)
    sessions = session_maker(engine)
    an_hour_ago = utcnow() - timedelta(hours=1)  # well past the 10 minutes, whatever the clock
    async with sessions.begin() as session:
        await record_fault(
            session,
            settings.task_queue,
            summary=LOGIN_FAULT,
            detail="127.0.0.1:587 (starttls) refused the login of AKIANUDGETEST: 535 ...",
            worker="1@gone",
            now=an_hour_ago,
        )
    async with api(settings, temporal) as http:
        body = (await http.get("/healthz")).json()
        assert body["status"] == "degraded" and body["smtp"] == LOGIN_FAULT and body["stale"]
        # Another task queue's workers are not this API's.
        other = make_settings(db_url, mailcatcher)
        async with api(other, temporal) as other_http:
            assert (await other_http.get("/healthz")).json() == {"status": "ok"}

        # The database gone: still 200 (a liveness probe), saying so.
        dead = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
        http.app.state.sessions = session_maker(dead)  # type: ignore[attr-defined]
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "degraded", "database": "not answering"}
        await dead.dispose()

        schema = (await http.get("/openapi.json")).json()["paths"]["/healthz"]["get"]
        assert "No authentication" in schema["description"]
        assert "no personal data and no secrets" in schema["description"]
        assert "security" not in schema
    await engine.dispose()
