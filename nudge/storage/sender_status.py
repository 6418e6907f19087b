"""The sender's state shared through the database: the worker holds the SMTP connections and
finds a sender fault (a refused login, a failed TLS handshake, a certificate for another host);
the API, which holds none, shows it on `/healthz`. One row per task queue (`models.SenderStatus`),
written only when the state changes or a worker's retry finds the fault again, never per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.storage.db import insert_for
from nudge.storage.models import SenderStatus

#: A fault no worker has found again for this long may be gone (or its worker may be): shown
#: as stale. A worker with mail to send retries at least every 2 minutes (the retry backoff).
STALE_AFTER = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class SenderHealth:
    """What `/healthz` may show of a fault: no host, no username, no server reply."""

    summary: str
    since: datetime
    checked_at: datetime

    def stale(self, now: datetime) -> bool:
        return now - self.checked_at > STALE_AFTER


async def record_fault(
    session: AsyncSession,
    task_queue: str,
    *,
    summary: str,
    detail: str,
    worker: str,
    now: datetime,
) -> None:
    """The fault `worker` of `task_queue` found at `now`: `since` moves only when the fault is
    a new one (another summary), `checked_at` every time."""
    insert = insert_for(session, SenderStatus).values(
        task_queue=task_queue,
        summary=summary,
        detail=detail,
        worker=worker,
        since=now,
        checked_at=now,
    )
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=["task_queue"],
            set_={
                "summary": insert.excluded.summary,
                "detail": insert.excluded.detail,
                "worker": insert.excluded.worker,
                "checked_at": insert.excluded.checked_at,
                # Kept while it is the same fault, whichever worker finds it again.
                "since": case(
                    (SenderStatus.summary == insert.excluded.summary, SenderStatus.since),
                    else_=insert.excluded.since,
                ),
            },
        )
    )


async def clear_fault(session: AsyncSession, task_queue: str) -> None:
    """A worker of `task_queue` logged in again (or at its start): no fault stands."""
    await session.execute(delete(SenderStatus).where(SenderStatus.task_queue == task_queue))


async def sender_health(session: AsyncSession, task_queue: str) -> SenderHealth | None:
    row = (
        await session.execute(
            select(SenderStatus.summary, SenderStatus.since, SenderStatus.checked_at).where(
                SenderStatus.task_queue == task_queue
            )
        )
    ).first()
    return None if row is None else SenderHealth(row.summary, row.since, row.checked_at)
