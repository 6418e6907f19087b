"""The sender's state shared through the database (nudge/storage/sender_status.py), on SQLite
and PostgreSQL: a fault keeps its `since` while it is the same one, a retry moves `checked_at`,
a login clears it, and one nobody found again for 10 minutes is stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.storage.sender_status import (
    STALE_AFTER,
    SenderHealth,
    clear_fault,
    record_fault,
    sender_health,
)
from support import new_id

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
LOGIN = "535 authentication failed: check NUDGE_SMTP_USERNAME / NUDGE_SMTP_PASSWORD"
TLS = "TLS handshake with the SMTP server failed: check NUDGE_SMTP_SECURITY"


async def found(sessions: Sessions, task_queue: str, summary: str, at: datetime) -> None:
    async with sessions.begin() as session:
        await record_fault(
            session, task_queue, summary=summary, detail=f"{summary} (detail)", worker="1@w", now=at
        )


async def health(sessions: Sessions, task_queue: str) -> SenderHealth | None:
    async with sessions() as session:
        return await sender_health(session, task_queue)


async def test_a_fault_keeps_its_since_until_it_changes_or_clears(sessions: Sessions) -> None:
    queue, other = new_id("queue"), new_id("queue")
    assert await health(sessions, queue) is None

    await found(sessions, queue, LOGIN, T0)
    await found(sessions, queue, LOGIN, T0 + timedelta(minutes=2))  # a retry found it again
    assert await health(sessions, queue) == SenderHealth(LOGIN, T0, T0 + timedelta(minutes=2))
    assert await health(sessions, other) is None  # one row per task queue

    await found(sessions, queue, TLS, T0 + timedelta(minutes=3))  # another fault: since moves
    changed = T0 + timedelta(minutes=3)
    assert await health(sessions, queue) == SenderHealth(TLS, changed, changed)

    async with sessions.begin() as session:
        await clear_fault(session, queue)
    assert await health(sessions, queue) is None
    await found(sessions, queue, TLS, T0 + timedelta(hours=1))  # back: a new since
    assert await health(sessions, queue) == SenderHealth(
        TLS, T0 + timedelta(hours=1), T0 + timedelta(hours=1)
    )


def test_a_fault_nobody_found_again_for_ten_minutes_is_stale() -> None:
    fault = SenderHealth(LOGIN, T0, T0 + timedelta(minutes=1))
    assert STALE_AFTER == timedelta(minutes=10)
    assert not fault.stale(T0 + timedelta(minutes=11))
    assert fault.stale(T0 + timedelta(minutes=11, seconds=1))
