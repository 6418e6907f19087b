"""The dashboard's sessions (api/sessions.py): they expire, sign-out revokes them (a copied cookie
too), and a change of either key ends them all."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api import sessions as dashboard
from nudge.settings import Settings
from nudge.storage.models import DashboardSession, utcnow
from support import Stack

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def keys(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "api_key": "k" * 32,
        "secret_key": "s" * 32,
        "dashboard_session_hours": 2,
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


async def test_a_session_expires(sessions: async_sessionmaker[AsyncSession]) -> None:
    settings, t0 = keys(), utcnow()
    cookie = await dashboard.open_session(sessions, settings, now=t0)
    assert await dashboard.session_ok(sessions, settings, cookie, now=t0 + timedelta(hours=1))
    later = t0 + timedelta(hours=2, seconds=1)
    assert not await dashboard.session_ok(sessions, settings, cookie, now=later)
    # The next sign-in sweeps it away.
    await dashboard.open_session(sessions, settings, now=later)
    async with sessions() as session:
        assert await session.get(DashboardSession, dashboard.digest(settings, cookie)) is None


async def test_sign_out_revokes_the_cookie_and_everywhere_every_one(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    settings = keys(api_key="revoke-" + "k" * 32)
    mine, other, third = [await dashboard.open_session(sessions, settings) for _ in range(3)]
    # The table holds digests, never a cookie.
    async with sessions() as session:
        stored = set((await session.scalars(select(DashboardSession.digest))).all())
    assert not {mine, other, third} & stored
    await dashboard.close_session(sessions, settings, mine)
    assert not await dashboard.session_ok(sessions, settings, mine)
    assert await dashboard.session_ok(sessions, settings, other)
    # A dead cookie cannot sign everyone out; a live one can.
    await dashboard.close_session(sessions, settings, mine, everywhere=True)
    assert await dashboard.session_ok(sessions, settings, other)
    await dashboard.close_session(sessions, settings, other, everywhere=True)
    assert not await dashboard.session_ok(sessions, settings, third)


async def test_changing_either_key_ends_every_session(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    settings = keys()
    cookie = await dashboard.open_session(sessions, settings)
    assert await dashboard.session_ok(sessions, settings, cookie)
    assert not await dashboard.session_ok(sessions, keys(api_key="n" * 32), cookie)
    assert not await dashboard.session_ok(sessions, keys(secret_key="n" * 32), cookie)
    assert not await dashboard.session_ok(sessions, settings, "")
    assert not await dashboard.session_ok(sessions, settings, None)


async def test_the_dashboard_cookie_expires_and_signing_out_kills_copies(stack: Stack) -> None:
    login = await stack.http.post(
        "/dashboard/login", content=f"key={stack.settings.api_key}".encode(), headers=FORM
    )
    assert login.status_code == 303
    cookie = login.cookies["nudge_key"]
    set_cookie = login.headers["set-cookie"].lower()
    hours = stack.settings.dashboard_session_hours
    assert f"max-age={int(hours * 3600)}" in set_cookie and "httponly" in set_cookie
    stack.http.cookies.clear()
    copied = {"Cookie": f"nudge_key={cookie}"}
    assert (await stack.http.get("/v1/reports/flows", headers=copied)).status_code == 200
    page = await stack.http.get("/dashboard", headers=copied)
    assert page.status_code == 200 and "id=app" in page.text

    [csrf] = re.findall(r"name=csrf value='([0-9a-f]+)'", page.text)
    logout = await stack.http.post(
        "/dashboard/logout", content=f"csrf={csrf}".encode(), headers=copied | FORM
    )
    assert logout.status_code == 303
    stack.http.cookies.clear()
    # The browser forgot it; a copy of it is refused too.
    assert (await stack.http.get("/v1/reports/flows", headers=copied)).status_code == 401
    page = await stack.http.get("/dashboard", headers=copied)
    assert "name=key" in page.text


async def test_wrong_keys_are_throttled_and_logout_needs_the_pages_token(stack: Stack) -> None:
    right = f"key={stack.settings.api_key}".encode()
    codes = []
    for _ in range(300):
        response = await stack.http.post("/dashboard/login", content=b"key=guess", headers=FORM)
        codes.append(response.status_code)
    limit = 5  # NUDGE_DASHBOARD_LOGIN_ATTEMPTS_PER_MINUTE, by default
    assert codes[:limit] == [401] * limit and set(codes[limit:]) == {429}
    # While blocked, even the right key is refused: a guesser cannot tell it.
    blocked = await stack.http.post("/dashboard/login", content=right, headers=FORM)
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60"
    # Another address is not blocked by this one's guesses.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.http._transport.app, client=("198.51.100.7", 1)),  # type: ignore[attr-defined]
        base_url="http://nudge",
    ) as other:
        login = await other.post("/dashboard/login", content=right, headers=FORM)
        assert login.status_code == 303
        cookie = {"Cookie": f"nudge_key={login.cookies['nudge_key']}"}
        other.cookies.clear()
        page = await other.get("/dashboard", headers=cookie)
        # HTML pages: no framing, nothing from elsewhere.
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        # A cross-site form (no token, or another's) cannot sign the reader out.
        for body in (b"everywhere=1", b"everywhere=1&csrf=" + b"0" * 64):
            forged = await other.post("/dashboard/logout", content=body, headers=cookie | FORM)
            assert forged.status_code == 403
        assert (await other.get("/v1/reports/flows", headers=cookie)).status_code == 200
