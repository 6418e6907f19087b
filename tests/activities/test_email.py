"""The send activity alone (Temporal's ActivityEnvironment), on a real database and SMTP server:
the idempotency protocol of the message log, row by row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities, Superseded
from conftest import make_settings
from nudge import events as ev
from nudge import queries
from nudge.db import create_engine, session_maker
from nudge.journeys import SendEmailInput, message_id
from nudge.mail import Commit, SmtpSender, build_message
from nudge.mailcatcher import MailCatcher
from nudge.models import Message
from nudge.render import TEMPLATES, RenderedEmail, Renderer
from nudge.settings import Settings
from support import cart_event, new_email, new_id

Sessions = async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture(loop_scope="session")
async def sessions(db_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(db_url)
    yield session_maker(engine)
    await engine.dispose()


@pytest.fixture
def settings(db_url: str, mailcatcher: MailCatcher) -> Settings:
    return make_settings(db_url, mailcatcher)


def activities(sessions: Sessions, settings: Settings, **kw: object) -> EmailActivities:
    sender = SmtpSender(settings.smtp_host, settings.smtp_port)
    return EmailActivities(sessions, sender, settings, **kw)  # type: ignore[arg-type]


async def seed_cart(sessions: Sessions, email: str, token: str) -> int:
    event = ev.event_adapter.validate_python(cart_event(email, token))
    async with sessions.begin() as session:
        contact_id = await queries.upsert_contact(session, event.contact)
        await queries.apply_event(session, event, contact_id)
    return contact_id


def job(contact_id: int, token: str, step: str = "cart_1", **kw: object) -> SendEmailInput:
    values: dict[str, object] = {
        "workflow_id": f"cart_abandonment-{contact_id}-{token}",
        "trigger_event_id": "evt_start",
        "flow": "cart_abandonment",
        "step": step,
        "template": step,
        "contact_id": contact_id,
        "key": token,
        "journey_started_at": datetime(2026, 11, 23, 10, tzinfo=UTC),
    }
    return SendEmailInput.model_validate(values | kw)


async def rows(sessions: Sessions, workflow_id: str) -> list[Message]:
    async with sessions() as session:
        return list(
            await session.scalars(select(Message).where(Message.workflow_id == workflow_id))
        )


async def test_a_step_is_sent_once_however_often_it_runs(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    send = activities(sessions, settings).send_email
    first = await ActivityEnvironment().run(send, job(contact_id, token))
    again = await ActivityEnvironment().run(send, job(contact_id, token))

    assert first == again
    assert (first.status, first.message_id) == (
        "sent",
        message_id(job(contact_id, token).workflow_id, "evt_start", "cart_1", "shop.example"),
    )
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert caught.message_id == first.message_id
    [row] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (row.status, row.attempts, row.to_email) == ("sent", 1, email)


class Crash(Exception):
    """Stands for the worker dying at the commit point (SIGKILL in the chaos test)."""


class CrashAtCommit(SmtpSender):
    async def send(self, message: EmailMessage, *, commit: Commit | None = None) -> None:
        async def crash() -> None:
            raise Crash()

        await super().send(message, commit=crash)


async def test_a_crash_before_the_final_dot_loses_nothing_and_duplicates_nothing(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    crashing = EmailActivities(
        sessions, CrashAtCommit(settings.smtp_host, settings.smtp_port), settings
    )
    with pytest.raises(Crash):
        await ActivityEnvironment().run(crashing.send_email, job(contact_id, token))
    wid = job(contact_id, token).workflow_id
    [row] = await rows(sessions, wid)
    assert (row.status, row.attempts) == ("sending", 1)
    # The server had the whole message but never its final dot: it kept nothing.
    await asyncio.sleep(0.2)
    assert [m for m in mailcatcher.messages if email in m.rcpt_tos] == []

    result = await ActivityEnvironment().run(
        activities(sessions, settings).send_email, job(contact_id, token)
    )
    caught = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert [m.message_id for m in caught] == [row.message_id]
    [row] = await rows(sessions, wid)
    assert (result.status, row.status, row.attempts) == ("sent", "sent", 2)


class Overtaken(SmtpSender):
    """While this attempt streams its message, a newer attempt of the same step (started after
    Temporal timed this one out) claims the row and delivers."""

    def __init__(self, settings: Settings, newer: Callable[[], Awaitable[object]]) -> None:
        super().__init__(settings.smtp_host, settings.smtp_port)
        self.newer = newer

    async def send(self, message: EmailMessage, *, commit: Commit | None = None) -> None:
        async def late_commit() -> None:
            await self.newer()
            assert commit is not None
            await commit()

        await super().send(message, commit=late_commit)


async def test_an_overtaken_attempt_does_not_deliver(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)

    def newer() -> Awaitable[object]:
        return ActivityEnvironment().run(
            activities(sessions, settings).send_email, job(contact_id, token)
        )

    slow = EmailActivities(sessions, Overtaken(settings, newer), settings)
    with pytest.raises(Superseded):
        await ActivityEnvironment().run(slow.send_email, job(contact_id, token))

    await asyncio.sleep(0.2)
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    [row] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (caught.message_id, row.status, row.attempts) == (row.message_id, "sent", 2)


async def test_kept_alive_connections_deliver_many_and_survive_a_server_restart(
    settings: Settings, mailcatcher: MailCatcher
) -> None:
    sender = SmtpSender(settings.smtp_host, settings.smtp_port, pool_size=2)
    rendered = RenderedEmail(subject="Hello", html="<p>Hi</p>", text="Hi\n")
    ids = [f"{new_id('m')}@shop.example" for _ in range(6)]
    to = new_email()

    def message(mid: str) -> EmailMessage:
        return build_message(
            rendered, from_email=settings.from_email, to_email=to, to_name="Ana", message_id=mid
        )

    await asyncio.gather(*(sender.send(message(mid)) for mid in ids[:4]))
    mailcatcher.stop()
    mailcatcher.start()  # the pooled connections are now dead; the next sends reconnect
    for mid in ids[4:]:
        await sender.send(message(mid))
    await sender.close()
    assert sorted(m.message_id or "" for m in mailcatcher.messages if to in m.rcpt_tos) == sorted(
        ids
    )


async def test_the_message_id_survives_a_change_of_sender_domain(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    mailcatcher.fail_next(1, code=451)
    with pytest.raises(Exception, match="451"):
        await ActivityEnvironment().run(
            activities(sessions, settings).send_email, job(contact_id, token)
        )
    [queued] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (queued.status, queued.attempts) == ("queued", 1)

    moved = settings.model_copy(update={"from_email": "Store <hello@new-domain.example>"})
    result = await ActivityEnvironment().run(
        activities(sessions, moved).send_email, job(contact_id, token)
    )
    assert result.message_id == queued.message_id and queued.message_id.endswith("@shop.example")
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert caught.message_id == queued.message_id


async def test_unsubscribed_contact_is_skipped_with_the_reason(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    unsubscribe = ev.event_adapter.validate_python(
        {
            "id": new_id("evt"),
            "type": "customer_unsubscribed",
            "occurred_at": "2026-11-23T10:30:00Z",
            "contact": {"email": email},
        }
    )
    async with sessions.begin() as session:
        await queries.apply_event(session, unsubscribe, contact_id)

    result = await ActivityEnvironment().run(
        activities(sessions, settings).send_email, job(contact_id, token)
    )
    assert (result.status, result.reason) == ("skipped", "unsubscribed")
    assert [m for m in mailcatcher.messages if email in m.rcpt_tos] == []
    # Transactional email is exempt from marketing consent.
    receipt = await ActivityEnvironment().run(
        activities(sessions, settings).send_email,
        job(contact_id, token, step="cart_2", transactional=True),
    )
    assert receipt.status == "sent"


async def test_template_error_fails_loudly_and_is_logged(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher, tmp_path: Path
) -> None:
    for part in ("subject", "html", "txt"):
        source = (TEMPLATES / f"cart_1.{part}").read_text()
        (tmp_path / f"broken.{part}").write_text(source + "{{ contact.nickname }}")
    for shared in TEMPLATES.glob("_*"):
        (tmp_path / shared.name).write_text(shared.read_text())
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    send = activities(sessions, settings, renderer=Renderer(tmp_path)).send_email

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(send, job(contact_id, token, template="broken"))
    assert raised.value.type == "TemplateError" and raised.value.non_retryable
    assert "nickname" in str(raised.value)
    [row] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (row.status, row.reason) == ("failed", "template_error")
    assert [m for m in mailcatcher.messages if email in m.rcpt_tos] == []
