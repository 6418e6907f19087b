"""The preference page behind every marketing email's footer link, and the double opt-in
confirmation link. Server-rendered HTML forms: they work without JavaScript.

- `GET /u/{token}` (the footer and `List-Unsubscribe` link) and `GET /p/{token}`: the topics
  (newsletters, promotions, SMS) as checkboxes, and "unsubscribe from everything";
- `POST /p/{token}`: saves the topics (`topics=...` form fields), or with `action=all`
  unsubscribes from all marketing exactly like the one-click `POST /u/{token}`;
- `GET /c/{token}`: the confirmation page, `POST /c/{token}`: confirms the subscription. The
  GET changes nothing, so a link scanner that fetches the link cannot confirm for the reader.
Every change is recorded in `consent_records` with the time, the source and the caller's IP.
"""

from __future__ import annotations

from html import escape
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.deps import RoutingDep, SessionsDep, SettingsDep
from api.errors import BadToken
from api.routers import unsubscribe
from nudge.contacts import consent, suppression
from nudge.events import schemas as ev
from nudge.mail import tokens
from nudge.settings import Settings
from nudge.storage.models import Consent, Contact, utcnow

router = APIRouter(tags=["unsubscribe"])

TOPIC_LABELS = {
    "newsletters": "Newsletters: news, guides and new collections",
    "promotions": "Promotions: offers, reminders about your cart, discounts",
    "sms": "Text messages (SMS)",
}


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def preference_page(
    sessions: SessionsDep, settings: Settings, contact: Contact, token: str, saved: bool = False
) -> HTMLResponse:
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
    action = f"/p/{escape(token)}"
    return unsubscribe.page(
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


@router.get("/p/{token}", response_class=HTMLResponse, summary="Preference page")
async def preferences(token: str, sessions: SessionsDep, settings: SettingsDep) -> HTMLResponse:
    contact, _ = await unsubscribe.contact_of(sessions, settings, token)
    return await preference_page(sessions, settings, contact, token)


@router.post("/p/{token}", response_class=HTMLResponse, summary="Save preferences")
async def save_preferences(
    token: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> HTMLResponse:
    contact, _ = await unsubscribe.contact_of(sessions, settings, token)
    form = parse_qs((await request.body()).decode(errors="replace"))
    if form.get("action") == ["all"]:
        return await unsubscribe.unsubscribe(token, sessions, settings, routing)
    chosen = set(form.get("topics", [])) & set(suppression.TOPICS)
    async with sessions.begin() as session:
        await suppression.set_topics(session, contact.id, chosen)
        consent.record(
            session,
            contact.id,
            "topics",
            source="preference_page",
            ip=_ip(request),
            details={"topics": sorted(chosen)},
        )
    return await preference_page(sessions, settings, contact, token, saved=True)


async def _confirm_claims(
    sessions: SessionsDep, settings: Settings, token: str
) -> tuple[Contact, str]:
    try:
        claims = tokens.verify(settings.secret_key, tokens.CONFIRM, token)
    except tokens.InvalidToken:
        raise BadToken("this confirmation link is not valid") from None
    async with sessions() as session:
        contact = await session.get(Contact, claims.contact_id)
    if contact is None:
        raise BadToken("this confirmation link is not valid")
    return contact, claims.message_id


@router.get("/c/{token}", response_class=HTMLResponse, summary="Confirm subscription page")
async def confirm_page(token: str, sessions: SessionsDep, settings: SettingsDep) -> HTMLResponse:
    contact, _ = await _confirm_claims(sessions, settings, token)
    if contact.consent == Consent.SUBSCRIBED:
        return unsubscribe.page(settings, "You are subscribed", "<p>Nothing more to do.</p>")
    return unsubscribe.page(
        settings,
        "Confirm your subscription",
        f"<p>Send our news and offers to {escape(contact.email)}?</p>"
        f"<form method=post action='/c/{escape(token)}'>"
        "<button type=submit>Yes, subscribe me</button></form>",
    )


@router.post("/c/{token}", response_class=HTMLResponse, summary="Confirm subscription")
async def confirm(
    token: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> HTMLResponse:
    contact, message_id = await _confirm_claims(sessions, settings, token)
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
        return unsubscribe.page(
            settings,
            "You are subscribed",
            f"<p>Thank you: {escape(contact.email)} is confirmed.</p>",
        )
    return unsubscribe.page(
        settings,
        "Nothing to confirm",
        "<p>This address has unsubscribed since; subscribe again on our site.</p>",
    )
