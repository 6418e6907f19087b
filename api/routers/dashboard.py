"""The dashboard: HTML pages served by the API, drawn in the browser from `GET /v1/reports/...`.

No build step and nothing fetched from elsewhere (works offline): each page is one HTML document
with the stylesheet (api/static/dashboard.css) and a small vanilla-JS script
(api/static/dashboard.js) that fetches the JSON and draws tables, the funnel and an inline-SVG
chart; both are served by this router, under `/dashboard/static/`.

Access: the pages ask once for the API key (`NUDGE_API_KEY`) and keep a session (api/sessions.py)
in an HttpOnly, SameSite=Strict cookie, which the report endpoints accept as well as the
`Authorization` header. A session expires after `NUDGE_DASHBOARD_SESSION_HOURS`, ends at sign-out
(`POST /dashboard/logout`, with `everywhere=1` for every browser, and the session's `csrf`
token), and when either key changes. Wrong keys are throttled per address
(`NUDGE_DASHBOARD_LOGIN_ATTEMPTS_PER_MINUTE`, then 429); every HTML page is sent with a
Content-Security-Policy that forbids framing (api/limits.py).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from api import sessions as dashboard_sessions
from api.deps import SessionsDep, SettingsDep, key_ok
from api.errors import Forbidden, NotFound, TooManyAttempts
from api.limits import Throttle
from api.sessions import COOKIE
from nudge.settings import Settings

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# The stylesheet and script of every page, served by `asset` below.
STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
STYLESHEET = "<link rel=stylesheet href='/dashboard/static/dashboard.css'>"


def _html(
    request: Request, settings: Settings, title: str, page: dict[str, str], crumb: str = ""
) -> HTMLResponse:
    data = json.dumps(page | {"store": settings.store_name}).replace("<", "\\u003c")
    csrf = dashboard_sessions.csrf_token(settings, request.cookies.get(COOKIE))
    return HTMLResponse(
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} · Nudge</title>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"{STYLESHEET}</head><body>"
        f"<header><a href='/dashboard'>{escape(settings.store_name)}</a>"
        f"<span class=crumb>{escape(crumb)}</span>"
        "<form method=post action='/dashboard/logout' class=signout>"
        f"<input type=hidden name=csrf value='{csrf}'>"
        "<button type=submit>Sign out</button></form></header>"
        f"<main id=app></main><script type='application/json' id=page>{data}</script>"
        "<script src='/dashboard/static/dashboard.js'></script></body></html>",
        headers={"Cache-Control": "no-store"},
    )


def _login(settings: Settings, next_path: str, error: str = "") -> HTMLResponse:
    message = f"<p class=error>{escape(error)}</p>" if error else ""
    return HTMLResponse(
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Nudge dashboard</title>"
        f"{STYLESHEET}</head><body><header><a href='/dashboard'>"
        f"{escape(settings.store_name)}</a></header><main><h1>Dashboard</h1>{message}"
        "<form method=post action='/dashboard/login' class=filters>"
        f"<input type=hidden name=next value='{escape(next_path)}'>"
        "<label>API key <input type=password name=key autocomplete=current-password "
        "required></label> <button type=submit>Open</button></form></main></body></html>",
        status_code=401 if error else 200,
    )


async def _signed_in(request: Request, sessions: SessionsDep, settings: Settings) -> bool:
    return await dashboard_sessions.session_ok(sessions, settings, request.cookies.get(COOKIE))


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


@router.get("/dashboard", response_class=HTMLResponse)
async def store_page(
    request: Request, sessions: SessionsDep, settings: SettingsDep
) -> HTMLResponse:
    if not await _signed_in(request, sessions, settings):
        return _login(settings, _here(request))
    return _html(request, settings, "Flows", {"kind": "store"})


@router.get("/dashboard/flows/{flow}", response_class=HTMLResponse)
async def flow_page(
    flow: str, request: Request, sessions: SessionsDep, settings: SettingsDep
) -> HTMLResponse:
    if not await _signed_in(request, sessions, settings):
        return _login(settings, _here(request))
    return _html(request, settings, flow, {"kind": "flow", "flow": flow}, f"/ {flow}")


@router.get("/dashboard/flows/{flow}/preview", response_class=HTMLResponse)
async def preview_page(
    flow: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    contact: Annotated[str, Query()] = "",
) -> HTMLResponse:
    if not await _signed_in(request, sessions, settings):
        return _login(settings, _here(request))
    return _html(
        request,
        settings,
        f"{flow} preview",
        {"kind": "preview", "flow": flow},
        f"/ {flow} / preview",
    )


@router.get("/dashboard/static/{name}")
async def asset(name: str) -> FileResponse:
    """The dashboard's stylesheet and script. No authentication: they are the same for everyone
    and hold no data (the figures come from `/v1/reports`, which needs the key or the session
    cookie), and the sign-in page needs the stylesheet before anyone has signed in. Only the
    files named in `ASSETS` are served."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard asset {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.post("/dashboard/login", response_class=HTMLResponse)
async def login(request: Request, sessions: SessionsDep, settings: SettingsDep) -> Response:
    throttle: Throttle = request.app.state.login_throttle
    caller = request.client.host if request.client else "?"
    if throttle.blocked(caller):
        # Also the right key: a guesser must not learn it while blocked.
        raise TooManyAttempts(
            "too many wrong keys: try again in a minute", headers={"Retry-After": "60"}
        )
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0]
    next_path = (form.get("next") or ["/dashboard"])[0]
    # Only back into the dashboard: the form must not become an open redirect.
    if not next_path.startswith("/dashboard") or next_path.startswith("//"):
        next_path = "/dashboard"
    if not key_ok(settings, key):
        throttle.failed(caller)
        return _login(settings, next_path, "That is not the API key.")
    response = RedirectResponse(quote(next_path, safe="/?=&%"), status_code=303)
    response.set_cookie(
        COOKIE,
        await dashboard_sessions.open_session(sessions, settings),
        max_age=int(dashboard_sessions.lifetime(settings).total_seconds()),
        httponly=True,
        samesite="strict",
        secure=settings.public_url.startswith("https"),
    )
    return response


@router.post("/dashboard/logout")
async def logout(request: Request, sessions: SessionsDep, settings: SettingsDep) -> Response:
    """Ends this browser's session (its cookie no longer works anywhere, even copied), or with the
    form field `everywhere=1` every session. The form carries the session's `csrf` token: a
    page of another site cannot sign the reader out (403)."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    everywhere = (form.get("everywhere") or [""])[0] in ("1", "true", "on")
    cookie = request.cookies.get(COOKIE)
    if cookie and not dashboard_sessions.csrf_ok(settings, cookie, (form.get("csrf") or [""])[0]):
        raise Forbidden("sign out from the dashboard's own form (missing or wrong csrf token)")
    await dashboard_sessions.close_session(sessions, settings, cookie, everywhere=everywhere)
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(COOKIE)
    return response
