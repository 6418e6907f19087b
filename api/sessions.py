"""The dashboard's sessions: a sign-in that expires and can be revoked.

Signing in with the API key (`POST /dashboard/login`) makes a random session id (32 bytes) that
goes in the HttpOnly, SameSite=Strict cookie `nudge_key`; the database keeps only the
HMAC-SHA256 of the API key and that id under the dashboard's own key (nudge/keys.py, derived from
`NUDGE_SECRET_KEY`), with the session's expiry (`NUDGE_DASHBOARD_SESSION_HOURS`). So a copy of
the table signs nobody in, and a session ends:

  - when it expires (the cookie's Max-Age says the same to the browser);
  - at sign-out: `POST /dashboard/logout` deletes its row, so a copied cookie dies with it, and
    with `everywhere=1` every session's; the form carries the session's `csrf` token (a page of
    another site cannot sign anyone out);
  - when `NUDGE_API_KEY` or `NUDGE_SECRET_KEY` changes: no stored digest matches any more.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.keys import DASHBOARD, keyring
from nudge.settings import Settings
from nudge.storage.models import DashboardSession, utcnow

COOKIE = "nudge_key"


def lifetime(settings: Settings) -> timedelta:
    return timedelta(hours=settings.dashboard_session_hours)


def digest(settings: Settings, session_id: str) -> str:
    key = keyring(settings).signing_key(DASHBOARD)
    message = f"{settings.api_key}\x1f{session_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def csrf_token(settings: Settings, session_id: str | None) -> str:
    """The token the dashboard's forms carry (`csrf`): bound to the session, so a page of
    another site, which cannot read it, cannot post a form on the dashboard's behalf."""
    if not session_id:
        return ""
    key = keyring(settings).signing_key(DASHBOARD)
    return hmac.new(key, f"csrf\x1f{session_id}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(settings: Settings, session_id: str | None, given: str | None) -> bool:
    expected = csrf_token(settings, session_id)
    return bool(expected and given) and hmac.compare_digest(expected, given or "")


async def open_session(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, now: datetime | None = None
) -> str:
    """A new session's id, for the cookie; expired sessions are swept on the way."""
    at = now or utcnow()
    session_id = secrets.token_urlsafe(32)
    async with sessions.begin() as session:
        await session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= at))
        session.add(
            DashboardSession(
                digest=digest(settings, session_id),
                created_at=at,
                expires_at=at + lifetime(settings),
            )
        )
    return session_id


async def session_ok(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    session_id: str | None,
    now: datetime | None = None,
) -> bool:
    """Whether `session_id` (the cookie) is a live session of the current keys."""
    if not session_id:
        return False
    async with sessions() as session:
        found = await session.get(DashboardSession, digest(settings, session_id))
    return found is not None and found.expires_at > (now or utcnow())


async def close_session(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    session_id: str | None,
    *,
    everywhere: bool = False,
) -> None:
    """Sign out: this session, or with `everywhere` every one (only from a live session)."""
    if not session_id:
        return
    mine = digest(settings, session_id)
    async with sessions.begin() as session:
        if everywhere and await session.get(DashboardSession, mine) is not None:
            await session.execute(delete(DashboardSession))
        else:
            await session.execute(delete(DashboardSession).where(DashboardSession.digest == mine))
