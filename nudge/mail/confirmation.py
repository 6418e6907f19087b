"""The double opt-in confirmation email (README "Deliverability and consent").

With `NUDGE_DOUBLE_OPT_IN=true` a `customer_subscribed` leaves the contact `pending`
(nudge/contacts/consent.py) and the API sends them this email at once, with a signed link to
`/c/{token}` (api/routers/email_links.py); no marketing reaches them until they click it.
"""

from __future__ import annotations

import hashlib

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.mail import links
from nudge.mail.context import email_context
from nudge.mail.render import shared_renderer
from nudge.mail.smtp import build_message, sender_from_settings
from nudge.settings import Settings
from nudge.storage.models import Consent, Contact

CONFIRM_TEMPLATE = "confirm_subscription"


def confirmation_message_id(event_id: str, domain: str) -> str:
    """One Message-ID per subscription event: the store's retry of it sends the same email."""
    return f"confirm.{hashlib.sha256(event_id.encode()).hexdigest()[:32]}@{domain}"


async def send_confirmation_if_pending(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    contact_id: int,
    event_id: str,
) -> bool:
    """Email the double opt-in link if the contact is still pending; straight from the API, as
    it is one email, at once. Raises on an SMTP failure, so the event stays unrouted and the
    store's retry of it sends the email again."""
    mid = confirmation_message_id(event_id, settings.from_domain)
    async with sessions() as session:
        contact = await session.get(Contact, contact_id)
        if contact is None or contact.consent != Consent.PENDING:
            return False
        context = await email_context(session, settings, contact, mid)
    context["confirm_url"] = links.confirm_url(settings, contact.id, mid)
    rendered = shared_renderer().render(CONFIRM_TEMPLATE, context)
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
