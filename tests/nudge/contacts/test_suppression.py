"""Provider feedback into the message log and the suppression list (nudge/contacts/suppression.py),
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.contacts import directory, suppression
from nudge.contacts.suppression import Feedback
from nudge.events import schemas as ev
from nudge.storage.models import MessageEvent
from support import new_email

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 24, 8, tzinfo=UTC)


async def contact(sessions: Sessions) -> tuple[int, str]:
    email = new_email()
    async with sessions.begin() as session:
        return await directory.upsert_contact(session, ev.ContactIn(email=email)), email


async def feed(sessions: Sessions, email: str, kind: str, minutes: int) -> suppression.Outcome:
    async with sessions.begin() as session:
        return await suppression.record_feedback(
            session, Feedback("ses", kind, email.upper(), None, at=T0 + timedelta(minutes=minutes))
        )


async def reasons(sessions: Sessions, contact_id: int) -> list[str]:
    async with sessions() as session:
        return [s.reason for s in await suppression.of_contact(session, contact_id)]


async def test_more_than_seven_soft_bounces_in_a_row_suppress(sessions: Sessions) -> None:
    contact_id, email = await contact(sessions)
    for minute in range(7):
        assert (await feed(sessions, email, "soft_bounce", minute)).suppressed is None
    # A delivery in between starts the count again.
    await feed(sessions, email, "delivery", 10)
    for minute in range(11, 18):
        assert (await feed(sessions, email, "soft_bounce", minute)).suppressed is None
    assert await reasons(sessions, contact_id) == []
    assert (await feed(sessions, email, "soft_bounce", 20)).suppressed == "soft_bounce"
    assert await reasons(sessions, contact_id) == ["soft_bounce"]
    async with sessions() as session:
        kinds = list(
            await session.scalars(
                select(MessageEvent.kind).where(MessageEvent.contact_id == contact_id)
            )
        )
    assert kinds.count("soft_bounce") == 15 and kinds.count("delivery") == 1


async def test_a_hard_bounce_and_a_complaint_suppress_at_once_and_once(sessions: Sessions) -> None:
    contact_id, email = await contact(sessions)
    assert (await feed(sessions, email, "hard_bounce", 0)).suppressed == "hard_bounce"
    assert (await feed(sessions, email, "hard_bounce", 1)).suppressed is None  # already
    assert (await feed(sessions, email, "complaint", 2)).suppressed == "complaint"
    assert sorted(await reasons(sessions, contact_id)) == ["complaint", "hard_bounce"]


async def test_feedback_about_an_unknown_address_changes_nothing(sessions: Sessions) -> None:
    outcome = await feed(sessions, new_email(), "complaint", 0)
    assert outcome == suppression.Outcome(None, None)


async def test_a_redelivered_report_counts_once(sessions: Sessions) -> None:
    contact_id, email = await contact(sessions)
    for _ in range(12):  # one soft bounce, delivered twelve times by the provider
        async with sessions.begin() as session:
            await suppression.record_feedback(
                session, Feedback("sendgrid", "soft_bounce", email, None, report_id="sg-1")
            )
    for n in range(2, 8):  # six more, each its own report: seven in a row, not more than seven
        async with sessions.begin() as session:
            await suppression.record_feedback(
                session, Feedback("sendgrid", "soft_bounce", email, None, report_id=f"sg-{n}")
            )
    assert await reasons(sessions, contact_id) == []
    async with sessions.begin() as session:
        outcome = await suppression.record_feedback(
            session, Feedback("sendgrid", "soft_bounce", email, None, report_id="sg-8")
        )
    assert outcome.suppressed == "soft_bounce"
