"""Consent: who agreed to marketing, when, from where, and double opt-in.

Every change is kept in `consent_records` (time, source, IP) as proof. With
`NUDGE_DOUBLE_OPT_IN=true` a `customer_subscribed` makes the contact `pending`, not
`subscribed`: they get a confirmation email with a signed link (`/c/{token}`,
nudge/mail/confirmation.py) and no marketing until they click it (`confirm`). A contact who
already confirmed stays subscribed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.contacts import suppression
from nudge.events import schemas as ev
from nudge.settings import Settings
from nudge.storage.db import rowcount
from nudge.storage.models import Consent, ConsentRecord, Contact, utcnow


def record(
    session: AsyncSession,
    contact_id: int,
    action: str,
    *,
    source: str,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    session.add(
        ConsentRecord(
            contact_id=contact_id,
            action=action,
            source=source[:100],
            ip=ip,
            details=details,
            at=at or utcnow(),
        )
    )


async def _set(
    session: AsyncSession,
    contact_id: int,
    consent: Consent,
    at: datetime,
    *,
    unless: Consent | None = None,
) -> bool:
    """Set consent unless a newer change is stored (or it is `unless`); True if it changed."""
    stmt = (
        update(Contact)
        .where(Contact.id == contact_id)
        .where(or_(Contact.consent_updated_at.is_(None), Contact.consent_updated_at <= at))
        .values(consent=consent, consent_updated_at=at)
    )
    if unless is not None:
        stmt = stmt.where(Contact.consent != unless)
    return bool(rowcount(await session.execute(stmt)))


async def on_subscribed(
    session: AsyncSession, settings: Settings, event: ev.CustomerSubscribed, contact_id: int
) -> None:
    """A store reported a subscription: subscribed, or pending under double opt-in."""
    source = event.source or "event"
    ip = str(event.ip) if event.ip is not None else None
    if settings.double_opt_in:
        if await _set(
            session, contact_id, Consent.PENDING, event.occurred_at, unless=Consent.SUBSCRIBED
        ):
            record(session, contact_id, "pending", source=source, ip=ip, at=event.occurred_at)
        return
    if await _set(session, contact_id, Consent.SUBSCRIBED, event.occurred_at):
        await suppression.remove(session, contact_id, "unsubscribe")
        record(session, contact_id, "subscribed", source=source, ip=ip, at=event.occurred_at)


async def on_unsubscribed(
    session: AsyncSession, event: ev.CustomerUnsubscribed, contact_id: int
) -> None:
    if await _set(session, contact_id, Consent.UNSUBSCRIBED, event.occurred_at):
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        await suppression.add(
            session, contact, "unsubscribe", source="event", details=event.id, at=event.occurred_at
        )
        record(session, contact_id, "unsubscribed", source=event.id, at=event.occurred_at)


async def confirm(session: AsyncSession, contact: Contact, *, ip: str | None) -> bool:
    """The contact clicked their confirmation link: subscribed. False if they were not
    pending (already confirmed, or unsubscribed since: a late click does not resubscribe)."""
    if contact.consent != Consent.PENDING:
        return False
    now = utcnow()
    if not await _set(session, contact.id, Consent.SUBSCRIBED, now):
        return False
    # A contact who had unsubscribed and subscribed again is off the list once confirmed.
    await suppression.remove(session, contact.id, "unsubscribe")
    record(session, contact.id, "confirmed", source="double_opt_in", ip=ip, at=now)
    return True
