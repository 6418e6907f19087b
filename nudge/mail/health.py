"""The worker's SMTP sender state, recorded for `/healthz` (nudge/storage/sender_status.py): the
API holds no SMTP connection, so it shows what the worker's sender found (README "Sending through
a provider")."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.mail.transport import SenderFault, StatusReport
from nudge.storage import sender_status
from nudge.storage.models import utcnow


def stored_status(
    sessions: async_sessionmaker[AsyncSession],
    task_queue: str,
    worker: str,
    now: Callable[[], datetime] = utcnow,
) -> StatusReport:
    """The `on_status` of `worker`'s sender (nudge/mail/smtp.py): a fault is stored for its task
    queue, a login that works clears it."""

    async def report(fault: SenderFault | None) -> None:
        async with sessions.begin() as session:
            if fault is None:
                await sender_status.clear_fault(session, task_queue)
            else:
                await sender_status.record_fault(
                    session,
                    task_queue,
                    summary=fault.summary,
                    detail=str(fault),
                    worker=worker,
                    now=now(),
                )

    return report
