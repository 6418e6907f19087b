"""The pages behind the signed links in emails: no login, the token is the credential
(nudge/mail/links.py). Server-rendered HTML forms: they work without JavaScript.

- `GET /u/{token}` (the footer and `List-Unsubscribe` link) and `GET /p/{token}`: the preference
  page, with the topics (newsletters, promotions, SMS) as checkboxes and "unsubscribe from
  everything";
- `POST /u/{token}`: one-click unsubscribe (RFC 8058), as mail clients send it from the
  `List-Unsubscribe` header;
- `POST /p/{token}`: saves the topics (`topics=...` form fields), or with `action=all`
  unsubscribes from all marketing exactly like the one-click `POST /u/{token}`;
- `GET /c/{token}`: the double opt-in confirmation page, `POST /c/{token}`: confirms the
  subscription. The GET changes nothing, so a link scanner that fetches the link cannot confirm
  for the reader.

Unsubscribing and confirming go through event ingestion (a `customer_unsubscribed`, a
`customer_subscribed`), so consent changes at once and running journeys are signalled; each later
send re-checks consent anyway. Every change is recorded in `consent_records` with the time, the
source and the caller's IP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from api.deps import RoutingDep, SessionsDep, SettingsDep
from api.errors import BadToken
from nudge.contacts import consent, suppression
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.keys import keyring
from nudge.mail import links, tracking
from nudge.settings import Settings
from nudge.storage.models import Consent, Contact, utcnow

router = APIRouter(tags=["unsubscribe"])

TOPIC_LABELS = {
    "newsletters": "Newsletters: news, guides and new collections",
    "promotions": "Promotions: offers, reminders about your cart, discounts",
    "sms": "Text messages (SMS)",
}

# What each purpose's link is called in the error a bad token gets.
_LINK_NAMES = {links.UNSUBSCRIBE: "unsubscribe", links.CONFIRM: "confirmation"}


@dataclass(frozen=True, slots=True)
class LinkedContact:
    """The contact a verified link names, the message it was sent in, and the token itself."""

    contact: Contact
    message_id: str
    token: str


def contact_from_token(purpose: str) -> Callable[..., Awaitable[LinkedContact]]:
    """A dependency: the `{token}` of the path, verified for `purpose`, and its contact; a token
    that is not valid, or names a contact that no longer exists, is a 400 (BadToken)."""
    refusal = f"this {_LINK_NAMES[purpose]} link is not valid"

    async def linked_contact(
        token: str, sessions: SessionsDep, settings: SettingsDep
    ) -> LinkedContact:
        try:
            claims = links.verify(keyring(settings), purpose, token)
        except links.InvalidToken:
            raise BadToken(refusal) from None
        async with sessions() as session:
            contact = await session.get(Contact, claims.contact_id)
        if contact is None:
            raise BadToken(refusal)
        return LinkedContact(contact, claims.message_id, token)

    return linked_contact


UnsubscribeLink = Annotated[LinkedContact, Depends(contact_from_token(links.UNSUBSCRIBE))]
ConfirmLink = Annotated[LinkedContact, Depends(contact_from_token(links.CONFIRM))]


def page(settings: Settings, title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        "<meta name=viewport content='width=device-width, initial-scale=1'></head>"
        "<body style='font-family: Helvetica, Arial, sans-serif; max-width: 32rem; margin: 4rem auto'>"
        f"<h1>{escape(title)}</h1>{body}<p>{escape(settings.store_name)}</p></body></html>"
    )


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


# ---- preferences and unsubscribe (`unsubscribe` tokens) -----------------------------------


async def preference_page(
    sessions: SessionsDep, settings: Settings, linked: LinkedContact, saved: bool = False
) -> HTMLResponse:
    contact = linked.contact
    async with sessions() as session:
        off = await suppression.topics_off(session, contact.id)
    if contact.consent == Consent.UNSUBSCRIBED:
        status = "<p>You are unsubscribed from all our marketing emails.</p>"
    else:
        status = "<p><strong>Your preferences are saved.</strong></p>" if saved else ""
    boxes = "".join(
        f"<p><label><input type=checkbox name=topics value={topic}"
        f"{'' if topic in off else ' checked'}> {escape(label)}</label></p>"
        for topic, label in TOPIC_LABELS.items()
    )
    action = f"/p/{escape(linked.token)}"
    return page(
        settings,
        "Your email preferences",
        f"{status}<p>What would you like to hear about at {escape(contact.email)}? Order "
        "confirmations and shipping updates always reach you.</p>"
        f"<form method=post action='{action}'>{boxes}"
        "<p><button type=submit name=action value=save>Save my preferences</button></p></form>"
        f"<form method=post action='{action}'>"
        "<p><button type=submit name=action value=all>Unsubscribe from everything</button></p>"
        "</form>",
    )


@router.get("/u/{token}", response_class=HTMLResponse, summary="Preference page")
async def unsubscribe_page(
    linked: UnsubscribeLink, sessions: SessionsDep, settings: SettingsDep
) -> HTMLResponse:
    return await preference_page(sessions, settings, linked)


@router.get("/p/{token}", response_class=HTMLResponse, summary="Preference page")
async def preferences(
    linked: UnsubscribeLink, sessions: SessionsDep, settings: SettingsDep
) -> HTMLResponse:
    return await preference_page(sessions, settings, linked)


async def unsubscribe_from_all(
    linked: LinkedContact,
    sessions: SessionsDep,
    settings: Settings,
    routing: RoutingDep,
) -> HTMLResponse:
    """From all marketing: the one-click `POST /u/{token}` and the preference page's button.

    Every click takes effect, also the same link clicked again after the store re-subscribed the
    contact (a legal requirement): each click is an event of its own (the link's id and a nonce),
    never dropped as a duplicate of an earlier click; applying it twice changes nothing more."""
    contact, message_id = linked.contact, linked.message_id
    event = ev.CustomerUnsubscribed(
        id=event_log.unique_event_id("unsubscribe", message_id),
        type="customer_unsubscribed",
        occurred_at=utcnow(),
        contact=ev.ContactIn(email=contact.email),
    )
    await routing.ingest_one(event, event.model_dump(mode="json", exclude_unset=True))
    async with sessions.begin() as session:
        await tracking.record_unsubscribe(session, contact.id, message_id)
    return page(
        settings,
        "You are unsubscribed",
        f"<p>{escape(contact.email)} will get no more marketing emails from us.</p>",
    )


@router.post("/u/{token}", response_class=HTMLResponse, summary="One-click unsubscribe")
async def unsubscribe(
    linked: UnsubscribeLink,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> HTMLResponse:
    return await unsubscribe_from_all(linked, sessions, settings, routing)


@router.post("/p/{token}", response_class=HTMLResponse, summary="Save preferences")
async def save_preferences(
    linked: UnsubscribeLink,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> HTMLResponse:
    form = parse_qs((await request.body()).decode(errors="replace"))
    if form.get("action") == ["all"]:
        return await unsubscribe_from_all(linked, sessions, settings, routing)
    chosen = set(form.get("topics", [])) & set(suppression.TOPICS)
    async with sessions.begin() as session:
        await suppression.set_topics(session, linked.contact.id, chosen)
        consent.record(
            session,
            linked.contact.id,
            "topics",
            source="preference_page",
            ip=_ip(request),
            details={"topics": sorted(chosen)},
        )
    return await preference_page(sessions, settings, linked, saved=True)


# ---- double opt-in (`confirm` tokens) -----------------------------------------------------


@router.get("/c/{token}", response_class=HTMLResponse, summary="Confirm subscription page")
async def confirm_page(linked: ConfirmLink, settings: SettingsDep) -> HTMLResponse:
    contact = linked.contact
    if contact.consent == Consent.SUBSCRIBED:
        return page(settings, "You are subscribed", "<p>Nothing more to do.</p>")
    return page(
        settings,
        "Confirm your subscription",
        f"<p>Send our news and offers to {escape(contact.email)}?</p>"
        f"<form method=post action='/c/{escape(linked.token)}'>"
        "<button type=submit>Yes, subscribe me</button></form>",
    )


@router.post("/c/{token}", response_class=HTMLResponse, summary="Confirm subscription")
async def confirm(
    linked: ConfirmLink,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> HTMLResponse:
    contact, message_id = linked.contact, linked.message_id
    async with sessions.begin() as session:
        current = await session.get(Contact, contact.id)
        assert current is not None
        confirmed = await consent.confirm(session, current, ip=_ip(request))
    if confirmed or contact.consent == Consent.SUBSCRIBED:
        # Now the subscription counts: flows triggered by `customer_subscribed` (a welcome
        # series) start. Its id is the link's, so a second click starts nothing new.
        event = ev.CustomerSubscribed(
            id=f"confirmed:{message_id}"[:128],
            type="customer_subscribed",
            occurred_at=utcnow(),
            contact=ev.ContactIn.model_construct(email=contact.email),
            source="double_opt_in",
        )
        await routing.ingest_one(event, event.model_dump(mode="json", exclude_unset=True))
        return page(
            settings,
            "You are subscribed",
            f"<p>Thank you: {escape(contact.email)} is confirmed.</p>",
        )
    return page(
        settings,
        "Nothing to confirm",
        "<p>This address has unsubscribed since; subscribe again on our site.</p>",
    )
