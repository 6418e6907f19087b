"""The suppression list, topic preferences and provider feedback (bounces, complaints).

Who may be emailed, decided from the database before every send (`skip_reason`):
- a **hard bounce** or a **spam complaint** blocks every email, transactional included: the
  address does not exist, or its owner told their mailbox provider we are spam, and mailing it
  again is what gets a sender blocklisted (SES and Postmark suppress these account-wide too);
- **soft_bounce** (more than `SOFT_BOUNCE_LIMIT` in a row), **unsubscribe**, **manual** and
  **sunset** block marketing only: order confirmations and shipping updates still go out;
- an unsubscribed contact, one who has not confirmed a double opt-in, or one who turned off the
  email's topic on the preference page gets no marketing either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import (
    Consent,
    Contact,
    Message,
    MessageEvent,
    ProviderReport,
    Suppression,
    TopicPreference,
    utcnow,
)

REASONS = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual", "sunset")
BLOCKS_ALL = frozenset({"hard_bounce", "complaint"})
# Email topics a contact can turn off on the preference page ("sms" is kept for the store's
# own SMS tool: Nudge sends no SMS). A flow email is "promotions" unless it says otherwise.
TOPICS = ("newsletters", "promotions", "sms")
DEFAULT_TOPIC = "promotions"
SOFT_BOUNCE_LIMIT = 7


async def skip_reason(
    session: AsyncSession, contact: Contact, *, transactional: bool, topic: str | None
) -> str | None:
    """Why `contact` must not get this email, or None. Called by the send activity."""
    reasons = set(
        await session.scalars(
            select(Suppression.reason).where(Suppression.contact_id == contact.id)
        )
    )
    if reasons & BLOCKS_ALL:
        return "suppressed"
    if transactional:
        return None
    if contact.consent == Consent.UNSUBSCRIBED or reasons == {"unsubscribe"}:
        return "unsubscribed"
    if reasons:
        return "suppressed"
    if contact.consent == Consent.PENDING:
        return "unconfirmed"
    if topic is not None and topic in await topics_off(session, contact.id):
        return "topic_unsubscribed"
    return None


# ---- the list -----------------------------------------------------------------------------------


async def add(
    session: AsyncSession,
    contact: Contact,
    reason: str,
    *,
    source: str,
    details: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Suppress `contact` for `reason`; False if it already was (the first record is kept)."""
    if reason not in REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    stmt = (
        insert_for(session, Suppression)
        .values(
            contact_id=contact.id,
            email=contact.email,
            reason=reason,
            source=source[:32],
            details=details,
            at=at or utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["contact_id", "reason"])
    )
    return rowcount(await session.execute(stmt)) > 0


async def remove(session: AsyncSession, contact_id: int, reason: str | None = None) -> int:
    stmt = delete(Suppression).where(Suppression.contact_id == contact_id)
    if reason is not None:
        stmt = stmt.where(Suppression.reason == reason)
    return rowcount(await session.execute(stmt))


async def of_contact(session: AsyncSession, contact_id: int) -> list[Suppression]:
    rows = await session.scalars(
        select(Suppression).where(Suppression.contact_id == contact_id).order_by(Suppression.id)
    )
    return list(rows)


async def listing(
    session: AsyncSession, *, reason: str | None = None, after: int = 0, limit: int = 100
) -> list[Suppression]:
    stmt = select(Suppression).where(Suppression.id > after)
    if reason is not None:
        stmt = stmt.where(Suppression.reason == reason)
    return list(await session.scalars(stmt.order_by(Suppression.id).limit(limit)))


# ---- topics -------------------------------------------------------------------------------------


async def topics_off(session: AsyncSession, contact_id: int) -> set[str]:
    rows = await session.scalars(
        select(TopicPreference.topic).where(
            TopicPreference.contact_id == contact_id, TopicPreference.subscribed.is_(False)
        )
    )
    return set(rows)


async def set_topics(session: AsyncSession, contact_id: int, chosen: set[str]) -> None:
    """Store the preference page's choice: every topic in `chosen` on, every other one off."""
    now = utcnow()
    for topic in TOPICS:
        stmt = insert_for(session, TopicPreference).values(
            contact_id=contact_id, topic=topic, subscribed=topic in chosen, updated_at=now
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["contact_id", "topic"],
                set_={"subscribed": stmt.excluded.subscribed, "updated_at": now},
            )
        )


# ---- provider feedback --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Feedback:
    """One bounce, complaint or delivery report from an email provider, provider-neutral."""

    source: str  # ses | sendgrid | postmark
    kind: str  # hard_bounce | soft_bounce | complaint | delivery
    email: str
    message_id: str | None  # our Message-ID if the provider echoed it, without <>
    details: str | None = None
    at: datetime | None = None
    # The provider's id of this report (with the recipient), to apply it once.
    report_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    contact_id: int | None
    suppressed: str | None  # the suppression reason this report added, if any
    # A complaint seen for the first time (not a redelivery): it always unsubscribes, also when
    # the complaint suppression was already there (a contact re-subscribed since).
    complained: bool = False


EVENT_KIND = {"hard_bounce": "bounce", "soft_bounce": "soft_bounce"}


async def record_feedback(session: AsyncSession, feedback: Feedback) -> Outcome:
    """Log the report against its message (`message_events`) and update the suppression list.
    A report about an address Nudge does not know changes nothing."""
    email = feedback.email.strip().lower()
    contact = await session.scalar(select(Contact).where(Contact.email == email))
    if contact is None:
        return Outcome(None, None)
    if feedback.report_id is not None:
        report_id = f"{feedback.source}:{feedback.report_id}:{email}"[:255]
        inserted = await session.execute(
            insert_for(session, ProviderReport)
            .values(id=report_id, received_at=utcnow())
            .on_conflict_do_nothing(index_elements=["id"])
        )
        if not rowcount(inserted):
            return Outcome(contact.id, None)  # a redelivery: applied already
    at = feedback.at or utcnow()
    mid = (feedback.message_id or "").strip().strip("<>")
    if not mid or await session.get(Message, mid) is None:
        # The provider did not echo our Message-ID: the contact's latest email is the best guess.
        mid = (
            await session.scalar(
                select(Message.message_id)
                .where(Message.contact_id == contact.id, Message.sent_at.is_not(None))
                .order_by(Message.sent_at.desc())
                .limit(1)
            )
            or ""
        )
    session.add(
        MessageEvent(
            message_id=mid,
            contact_id=contact.id,
            kind=EVENT_KIND.get(feedback.kind, feedback.kind),
            at=at,
        )
    )
    await session.flush()
    reason: str | None = None
    if feedback.kind in ("hard_bounce", "complaint"):
        reason = feedback.kind
    elif feedback.kind == "soft_bounce" and await _soft_bounces_in_a_row(session, contact.id) > (
        SOFT_BOUNCE_LIMIT
    ):
        reason = "soft_bounce"
    if reason is None:
        return Outcome(contact.id, None)
    added = await add(
        session, contact, reason, source=feedback.source, details=feedback.details, at=at
    )
    return Outcome(contact.id, reason if added else None, feedback.kind == "complaint")


async def _soft_bounces_in_a_row(session: AsyncSession, contact_id: int) -> int:
    """Soft bounces since the contact's last delivery report (or ever)."""
    last_delivery = await session.scalar(
        select(func.max(MessageEvent.at)).where(
            MessageEvent.contact_id == contact_id, MessageEvent.kind == "delivery"
        )
    )
    stmt = select(func.count()).where(
        MessageEvent.contact_id == contact_id, MessageEvent.kind == "soft_bounce"
    )
    if last_delivery is not None:
        stmt = stmt.where(MessageEvent.at > last_delivery)
    return int(await session.scalar(stmt) or 0)
