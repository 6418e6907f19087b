"""Open pixel and click redirect: `GET /t/o/{token}.gif` and `GET /t/c/{token}`, without a login
(the signed token is the credential; nudge/mail/tracking.py).

The click redirect goes only to the URL signed into its token, so it cannot be used to send
anyone anywhere else; an altered token is a 400, never a redirect. Recording never stands in the
reader's way: a click whose message is unknown (deleted) still redirects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import SessionsDep, SettingsDep
from api.errors import BadToken
from nudge.keys import Keyring, keyring
from nudge.mail import links, tracking
from nudge.settings import Settings

router = APIRouter(tags=["tracking"])

NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}

Claims = TypeVar("Claims")


def _verified(
    verify: Callable[[Keyring, str], Claims], settings: Settings, token: str, link: str
) -> Claims:
    try:
        return verify(keyring(settings), token)
    except links.InvalidToken:
        raise BadToken(f"this {link} is not valid") from None


def _client(request: Request) -> tuple[str | None, str | None]:
    return request.headers.get("user-agent"), request.client.host if request.client else None


@router.get(
    "/t/o/{token}.gif",
    summary="Open pixel",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}}, 400: {"description": "Invalid token"}},
)
async def open_pixel(
    token: str, request: Request, sessions: SessionsDep, settings: SettingsDep
) -> Response:
    claims = _verified(tracking.verify_open, settings, token, "tracking link")
    agent, ip = _client(request)
    async with sessions.begin() as session:
        await tracking.record_open(
            session, claims.contact_id, claims.message_id, user_agent=agent, client_ip=ip
        )
    return Response(tracking.PIXEL_GIF, media_type="image/gif", headers=NO_STORE)


@router.get(
    "/t/c/{token}",
    summary="Click redirect",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "To the link from the email"},
        400: {"description": "Invalid token"},
    },
)
async def click(
    token: str, request: Request, sessions: SessionsDep, settings: SettingsDep
) -> RedirectResponse:
    claims = _verified(tracking.verify_click, settings, token, "link")
    agent, ip = _client(request)
    async with sessions.begin() as session:
        await tracking.record_click(
            session, claims, user_agent=agent, client_ip=ip, settings=settings
        )
    return RedirectResponse(claims.url, status_code=302, headers=NO_STORE)
