"""The contact steps of a flow (activities/contacts.py) on SQLite and PostgreSQL: the profile a
split reads, and the updates a step makes, retried as Temporal would retry them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.contacts import ContactActivities
from activities.email import EmailActivities
from conftest import make_settings
from nudge.contacts import directory, suppression
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import (
    ContactProfile,
    ContactProfileInput,
    ContactUpdateInput,
    SendEmailInput,
)
from nudge.mail.smtp import SmtpSender
from nudge.segments import catalogue, membership
from nudge.storage.models import Contact, MessageEvent
from support import new_email, new_id, order_event

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 24, 8, tzinfo=UTC)


@pytest.fixture
def contacts(sessions: Sessions, db_url: str, mailcatcher: MailCatcher) -> ContactActivities:
    return ContactActivities(sessions, make_settings(db_url, mailcatcher))


async def new_contact(sessions: Sessions, **fields: object) -> int:
    async with sessions.begin() as session:
        return await directory.upsert_contact(
            session, ev.ContactIn.model_validate({"email": new_email(), **fields})
        )


async def place_order(sessions: Sessions, contact_id: int, *, refunded: bool = False) -> None:
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        order_id = new_id("ord")
        for body in [order_event(contact.email, order_id)] + (
            [{**order_event(contact.email, order_id), "type": "order_refunded"}] if refunded else []
        ):
            event = ev.event_adapter.validate_python(body)
            await projection.apply_event(session, event, contact_id)


async def engage(
    sessions: Sessions, contact_id: int, kind: str, at: datetime, **kw: object
) -> None:
    async with sessions.begin() as session:
        session.add(
            MessageEvent(message_id=new_id("msg"), contact_id=contact_id, kind=kind, at=at, **kw)
        )


async def profile(contacts: ContactActivities, contact_id: int) -> ContactProfile:
    return await ActivityEnvironment().run(
        contacts.profile, ContactProfileInput(contact_id=contact_id)
    )


async def update(contacts: ContactActivities, contact_id: int, **kw: object) -> None:
    job = ContactUpdateInput.model_validate(
        {
            "workflow_id": f"sunset-{contact_id}-unengaged_180",
            "step": "sunset",
            "contact_id": contact_id,
        }
        | kw
    )
    await ActivityEnvironment().run(contacts.update_contact, job)


async def test_a_new_contact_has_an_empty_profile_but_its_properties(
    contacts: ContactActivities, sessions: Sessions
) -> None:
    cid = await new_contact(sessions, properties={"size": "M"})
    assert await profile(contacts, cid) == ContactProfile(properties={"size": "M"})


async def test_the_profile_reads_segments_tags_orders_and_human_engagement(
    contacts: ContactActivities, sessions: Sessions
) -> None:
    cid = await new_contact(sessions, properties={"size": "M"}, tags=["newsletter", "b2b"])
    for _ in range(3):
        await place_order(sessions, cid)
    await place_order(sessions, cid, refunded=True)  # refunded: not an order, as in segments
    async with sessions.begin() as session:
        await catalogue.ensure_builtin_segments(session, T0)
        await membership.refresh_contact(session, cid, T0)
    await engage(sessions, cid, "open", T0 - timedelta(days=3))
    await engage(sessions, cid, "click", T0 - timedelta(days=2))
    # Later, but by machines (Apple's proxy, a link scanner) or not engagement at all.
    await engage(sessions, cid, "open", T0 - timedelta(days=1), machine=True)
    await engage(sessions, cid, "click", T0 - timedelta(hours=20), machine=True)
    await engage(sessions, cid, "bounce", T0 - timedelta(hours=10))

    got = await profile(contacts, cid)

    assert got.orders == 3
    assert "vip" in got.segments and "repeat_buyers" in got.segments
    assert "one_time_buyers" not in got.segments and got.segments == sorted(got.segments)
    assert got.tags == ["b2b", "newsletter"]
    assert got.properties == {"size": "M"}
    assert got.last_engaged_at == T0 - timedelta(days=2)


async def test_a_contact_that_is_gone_has_an_empty_profile_and_nothing_to_update(
    contacts: ContactActivities,
) -> None:
    assert await profile(contacts, 987_654_321) == ContactProfile()
    await update(contacts, 987_654_321, tags=["x"], suppress="sunset")  # no error, no row


async def test_update_merges_properties_adds_tags_and_is_idempotent(
    contacts: ContactActivities, sessions: Sessions
) -> None:
    cid = await new_contact(sessions, properties={"size": "M", "plan": "basic"}, tags=["old"])
    for _ in range(2):  # a retried attempt changes nothing more
        await update(
            contacts,
            cid,
            properties={"welcomed": True, "plan": "gold", "score": 3},
            tags=["welcomed", "old", "welcomed"],
        )
    got = await profile(contacts, cid)
    assert got.properties == {"size": "M", "plan": "gold", "welcomed": True, "score": 3}
    assert got.tags == ["old", "welcomed"]
    # None removes a property; the others stay.
    await update(contacts, cid, properties={"plan": None})
    assert (await profile(contacts, cid)).properties == {"size": "M", "welcomed": True, "score": 3}


async def test_suppress_blocks_marketing_once_however_often_retried(
    contacts: ContactActivities, sessions: Sessions, db_url: str, mailcatcher: MailCatcher
) -> None:
    cid = await new_contact(sessions)
    for _ in range(3):
        await update(contacts, cid, suppress="sunset")
    async with sessions() as session:
        rows = await suppression.of_contact(session, cid)
    assert [(r.reason, r.source) for r in rows] == [("sunset", "flow")]
    assert rows[0].details == f"sunset-{cid}-unengaged_180 step sunset"
    # What it is for: the send activity now skips the contact's marketing, not its receipts.
    settings = make_settings(db_url, mailcatcher)
    email = EmailActivities(sessions, SmtpSender(settings.smtp_host, settings.smtp_port), settings)
    job = SendEmailInput(
        workflow_id=f"test-{cid}-x",
        trigger_event_id=new_id("evt"),
        flow="test",
        step="m",
        template="cart_1",
        contact_id=cid,
        key="x",
        journey_started_at=T0,
    )
    result = await ActivityEnvironment().run(email.send_email, job)
    assert (result.status, result.reason) == ("skipped", "suppressed")
    async with sessions() as session:
        contact = await session.get(Contact, cid)
        assert contact is not None
        assert (
            await suppression.skip_reason(session, contact, transactional=True, topic=None) is None
        )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"suppress": "bored"}, "suppress"),
        ({"tags": ["ok", "Not A Tag"]}, "tags"),
        ({"properties": {"Bad-Name": 1}}, "properties"),
    ],
)
async def test_an_impossible_update_fails_naming_the_field_and_changes_nothing(
    contacts: ContactActivities, sessions: Sessions, change: dict[str, object], field: str
) -> None:
    cid = await new_contact(sessions)
    with pytest.raises(ApplicationError) as raised:
        await update(contacts, cid, **({"tags": ["ok"], "properties": {"ok": 1}} | change))
    assert raised.value.message.startswith(f"{field}: ") and raised.value.non_retryable
    async with sessions() as session:
        assert await suppression.of_contact(session, cid) == []
        contact = await session.scalar(select(Contact).where(Contact.id == cid))
    assert contact is not None and contact.properties == {}
    assert (await profile(contacts, cid)).tags == []
