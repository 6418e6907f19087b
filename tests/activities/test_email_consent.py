"""The send activity's consent checks (nudge/contacts/suppression.py), each on a real database and SMTP
server: what the suppression list, topics and double opt-in let through, marketing versus
transactional."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities
from conftest import make_settings
from nudge.contacts import directory, suppression
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import SendEmailInput, SendEmailResult
from nudge.mail.smtp import SmtpSender
from nudge.settings import Settings
from nudge.storage.models import Consent, Contact
from support import cart_event, new_email, new_id

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def settings(db_url: str, mailcatcher: MailCatcher) -> Settings:
    return make_settings(db_url, mailcatcher)


async def seed(sessions: Sessions, token: str) -> tuple[int, str]:
    email = new_email()
    event = ev.event_adapter.validate_python(cart_event(email, token))
    async with sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, event.contact)
        await projection.apply_event(session, event, contact_id)
    return contact_id, email


async def send(
    sessions: Sessions, settings: Settings, contact_id: int, token: str, **kw: object
) -> SendEmailResult:
    values: dict[str, object] = {
        "workflow_id": f"consent-{contact_id}-{token}",
        "trigger_event_id": new_id("evt"),
        "flow": "consent_test",
        "step": "cart_1",
        "template": "cart_1",
        "contact_id": contact_id,
        "key": token,
        "journey_started_at": datetime(2026, 11, 23, 10, tzinfo=UTC),
    }
    activities = EmailActivities(
        sessions, SmtpSender(settings.smtp_host, settings.smtp_port), settings
    )
    job = SendEmailInput.model_validate(values | kw)
    return await ActivityEnvironment().run(activities.send_email, job)


async def suppress(sessions: Sessions, contact_id: int, reason: str) -> None:
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        await suppression.add(session, contact, reason, source="test")


@pytest.mark.parametrize(
    ("reason", "marketing", "transactional"),
    [
        ("hard_bounce", "suppressed", "suppressed"),
        ("complaint", "suppressed", "suppressed"),
        ("soft_bounce", "suppressed", None),
        ("manual", "suppressed", None),
        ("sunset", "suppressed", None),
        ("unsubscribe", "unsubscribed", None),
    ],
)
async def test_suppressed_contacts_get_what_their_reason_allows(
    sessions: Sessions,
    settings: Settings,
    mailcatcher: MailCatcher,
    reason: str,
    marketing: str,
    transactional: str | None,
) -> None:
    token = new_id("cart")
    contact_id, email = await seed(sessions, token)
    await suppress(sessions, contact_id, reason)
    result = await send(sessions, settings, contact_id, token)
    assert (result.status, result.reason) == ("skipped", marketing)
    result = await send(sessions, settings, contact_id, token, step="receipt", transactional=True)
    assert (result.status, result.reason) == (
        ("skipped", transactional) if transactional else ("sent", None)
    )
    assert len([m for m in mailcatcher.messages if email in m.rcpt_tos]) == (
        0 if transactional else 1
    )


async def test_a_topic_turned_off_skips_only_that_topic(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    token = new_id("cart")
    contact_id, email = await seed(sessions, token)
    async with sessions.begin() as session:
        await suppression.set_topics(session, contact_id, {"newsletters", "sms"})
    promo = await send(sessions, settings, contact_id, token)  # a flow email is "promotions"
    assert (promo.status, promo.reason) == ("skipped", "topic_unsubscribed")
    news = await send(sessions, settings, contact_id, token, step="news", topic="newsletters")
    assert news.status == "sent"
    # Turned on again, promotions flow again.
    async with sessions.begin() as session:
        await suppression.set_topics(session, contact_id, set(suppression.TOPICS))
    again = await send(sessions, settings, contact_id, token, step="cart_2", template="cart_2")
    assert again.status == "sent"
    assert len([m for m in mailcatcher.messages if email in m.rcpt_tos]) == 2


async def test_an_unconfirmed_double_opt_in_gets_no_marketing(
    sessions: Sessions, settings: Settings
) -> None:
    token = new_id("cart")
    contact_id, _ = await seed(sessions, token)
    async with sessions.begin() as session:
        await session.execute(
            update(Contact).where(Contact.id == contact_id).values(consent=Consent.PENDING)
        )
    result = await send(sessions, settings, contact_id, token)
    assert (result.status, result.reason) == ("skipped", "unconfirmed")
    receipt = await send(sessions, settings, contact_id, token, step="r", transactional=True)
    assert receipt.status == "sent"
