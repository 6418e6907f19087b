"""Consent: who agreed to marketing, when, from where, and double opt-in.

Every change is kept in `consent_records` (time, source, IP) as proof. With
`NUDGE_DOUBLE_OPT_IN=true` a `customer_subscribed` makes the contact `pending`, not
`subscribed`: they get a confirmation email with a signed link (`/c/{token}`) and no
marketing until they click it. A contact who already confirmed stays subscribed.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.contacts import suppression
from nudge.events import schemas as ev
from nudge.mail import context as personalize
from nudge.mail import links
from nudge.mail.render import Renderer
from nudge.mail.smtp import build_message, sender_from_settings
from nudge.settings import Settings
from nudge.storage.models import Consent, ConsentRecord, Contact, utcnow

CONFIRM_TEMPLATE = "confirm_subscription"


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
    result: Any = await session.execute(stmt)
    return bool(result.rowcount)


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


def confirmation_message_id(event_id: str, domain: str) -> str:
    return f"confirm.{hashlib.sha256(event_id.encode()).hexdigest()[:32]}@{domain}"


_renderer: Renderer | None = None


def _shared_renderer() -> Renderer:
    # Built once per process (it pre-inlines every template's CSS).
    global _renderer
    if _renderer is None:
        _renderer = Renderer()
    return _renderer


async def send_confirmation_if_pending(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    contact_id: int,
    event_id: str,
) -> bool:
    """Email the double opt-in link if the contact is still pending; straight from the API, as
    it is one email, at once. Raises on an SMTP failure, so the event stays unrouted and the
    store's retry of it sends the email again."""
    async with sessions() as session:
        contact = await session.get(Contact, contact_id)
    if contact is None or contact.consent != Consent.PENDING:
        return False
    mid = confirmation_message_id(event_id, settings.from_domain)
    rendered = _shared_renderer().render(
        CONFIRM_TEMPLATE, confirmation_context(settings, contact, mid)
    )
    message = build_message(
        rendered,
        from_email=settings.from_email,
        to_email=contact.email,
        to_name=contact.first_name,
        message_id=mid,
        headers={"X-Nudge-Flow": "double_opt_in"},
    )
    sender = sender_from_settings(settings)
    try:
        await sender.send(message)
    finally:
        await sender.close()
    return True


def confirmation_context(settings: Settings, contact: Contact, mid: str) -> dict[str, Any]:
    return {
        "contact": personalize.contact_context(contact),
        "store": {
            "name": settings.store_name,
            "address": settings.store_address,
            "url": settings.public_url,
            "logo_url": settings.store_logo_url,
        },
        "loyalty": {"tier": None, "points": 0},
        "message_id": mid,
        "now": utcnow(),
        "unsubscribe_url": None,
        "confirm_url": links.confirm_url(settings, contact.id, mid),
    }
