"""Open pixel and click redirect: `GET /t/o/{token}.gif` and `GET /t/c/{token}`, without a login
(the signed token is the credential; nudge/tracking.py).

The click redirect goes only to the URL signed into its token, so it cannot be used to send
anyone anywhere else; an altered token is a 400, never a redirect. Recording never stands in the
reader's way: a click whose message is unknown (deleted) still redirects.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import SessionsDep, SettingsDep
from api.errors import BadToken
from nudge.mail import tokens, tracking

router = APIRouter(tags=["tracking"])

NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


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
    try:
        claims = tracking.verify_open(settings.secret_key, token)
    except tokens.InvalidToken:
        raise BadToken("this tracking link is not valid") from None
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
    try:
        claims = tracking.verify_click(settings.secret_key, token)
    except tokens.InvalidToken:
        raise BadToken("this link is not valid") from None
    agent, ip = _client(request)
    async with sessions.begin() as session:
        await tracking.record_click(
            session, claims, user_agent=agent, client_ip=ip, settings=settings
        )
    return RedirectResponse(claims.url, status_code=302, headers=NO_STORE)
