"""The dashboard's sessions (api/sessions.py): they expire, sign-out revokes them (a copied cookie
too), and a change of either key ends them all."""

from __future__ import annotations

from datetime import timedelta

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

    logout = await stack.http.post("/dashboard/logout", headers=copied | FORM)
    assert logout.status_code == 303
    stack.http.cookies.clear()
    # The browser forgot it; a copy of it is refused too.
    assert (await stack.http.get("/v1/reports/flows", headers=copied)).status_code == 401
    page = await stack.http.get("/dashboard", headers=copied)
    assert "name=key" in page.text
