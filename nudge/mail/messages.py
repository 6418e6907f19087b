"""The message log: one row per (journey, step), claimed before a send and fenced by attempt, so
a retried send is never delivered twice; smart sending reads it across every flow."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    exists,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import (
    Message,
    MessageStatus,
    utcnow,
)


async def find_message(
    session: AsyncSession, workflow_id: str, trigger_event_id: str, step: str
) -> Message | None:
    """The log row of one (journey, step), if any, as it is now (not locked)."""
    stmt = (
        select(Message)
        .where(
            Message.workflow_id == workflow_id,
            Message.trigger_event_id == trigger_event_id,
            Message.step == step,
        )
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def claim_message(session: AsyncSession, values: dict[str, Any]) -> Message:
    """The log row of one (journey, step), created queued on first sight. Found by the step, not
    the Message-ID, so a row keeps the id it was first sent with even if the sender's domain
    changes between retries. Locked on PostgreSQL so that two concurrent attempts of the same
    step cannot both send."""
    await session.execute(
        insert_for(session, Message).values(created_at=utcnow(), **values).on_conflict_do_nothing()
    )
    stmt = (
        select(Message)
        .where(
            Message.workflow_id == values["workflow_id"],
            Message.trigger_event_id == values["trigger_event_id"],
            Message.step == values["step"],
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one()


async def marketing_sent_since(
    session: AsyncSession, contact_id: int, since: datetime, *, exclude: tuple[str, str]
) -> bool:
    """Whether the contact got (or is being sent) a marketing email scheduled after `since`,
    other than the step `exclude` (workflow id, step): smart sending, across every flow."""
    workflow_id, step = exclude
    stmt = select(
        exists().where(
            Message.contact_id == contact_id,
            Message.transactional.is_(False),
            Message.status.in_((MessageStatus.SENT, MessageStatus.SENDING)),
            Message.scheduled_at > since,
            ~and_(Message.workflow_id == workflow_id, Message.step == step),
        )
    )
    return bool(await session.scalar(stmt))


async def mark_sent(session: AsyncSession, message_id: str, attempt: int) -> bool:
    """`sending` -> `sent`, only for the attempt that holds the row; False if superseded."""
    stmt = (
        update(Message)
        .where(
            Message.message_id == message_id,
            Message.status == MessageStatus.SENDING,
            Message.attempts == attempt,
        )
        .values(status=MessageStatus.SENT, sent_at=utcnow(), error=None)
    )
    return rowcount(await session.execute(stmt)) == 1


async def requeue(
    session: AsyncSession, message_id: str, attempt: int, status: MessageStatus, error: str
) -> bool:
    """`status` -> `queued` (not sent, to be retried), only for the attempt that holds the row."""
    stmt = (
        update(Message)
        .where(
            Message.message_id == message_id,
            Message.status == status,
            Message.attempts == attempt,
        )
        .values(status=MessageStatus.QUEUED, sent_at=None, error=error)
    )
    return rowcount(await session.execute(stmt)) == 1


async def set_message_status(session: AsyncSession, message_id: str, **values: Any) -> None:
    await session.execute(update(Message).where(Message.message_id == message_id).values(**values))
