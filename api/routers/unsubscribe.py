"""One-click unsubscribe (RFC 8058): `POST /u/{token}` without a login, as mail clients send it
from the `List-Unsubscribe` header, and `GET /u/{token}`, the footer link's confirmation page.

The token is signed for one contact (nudge/tokens.py). Unsubscribing goes through event
ingestion as a `customer_unsubscribed`, so consent changes at once and every running journey
that exits on it is signalled; each later send re-checks consent anyway.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.deps import RoutingDep, SessionsDep, SettingsDep
from api.errors import BadToken
from nudge.events import schemas as ev
from nudge.mail import tokens, tracking
from nudge.settings import Settings
from nudge.storage.models import Contact, utcnow

router = APIRouter(tags=["unsubscribe"])


def page(settings: Settings, title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        "<meta name=viewport content='width=device-width, initial-scale=1'></head>"
        "<body style='font-family: Helvetica, Arial, sans-serif; max-width: 32rem; margin: 4rem auto'>"
        f"<h1>{escape(title)}</h1>{body}<p>{escape(settings.store_name)}</p></body></html>"
    )


async def contact_of(sessions: SessionsDep, settings: Settings, token: str) -> tuple[Contact, str]:
    try:
        claims = tokens.verify(settings.secret_key, tokens.UNSUBSCRIBE, token)
    except tokens.InvalidToken:
        raise BadToken("this unsubscribe link is not valid") from None
    async with sessions() as session:
        contact = await session.get(Contact, claims.contact_id)
    if contact is None:
        raise BadToken("this unsubscribe link is not valid")
    return contact, claims.message_id


@router.get("/u/{token}", response_class=HTMLResponse, summary="Preference page")
async def unsubscribe_page(
    token: str, sessions: SessionsDep, settings: SettingsDep
) -> HTMLResponse:
    # The footer link: the preference page (api/routers/preferences.py).
    from api.routers.preferences import preference_page

    contact, _ = await contact_of(sessions, settings, token)
    return await preference_page(sessions, settings, contact, token)


@router.post("/u/{token}", response_class=HTMLResponse, summary="One-click unsubscribe")
async def unsubscribe(
    token: str,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> HTMLResponse:
    contact, message_id = await contact_of(sessions, settings, token)
    event = ev.CustomerUnsubscribed(
        id=f"unsubscribe:{message_id}",
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
