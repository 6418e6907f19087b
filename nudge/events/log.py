"""The event log: every store event stored once under its id (the idempotency key), and the
outbox of what is left to route (`routed_at`), including the internal events an event causes."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.events import schemas as ev
from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import (
    StoreEvent,
    utcnow,
)


async def event_status(session: AsyncSession, event_id: str) -> StoreEvent | None:
    return await session.get(StoreEvent, event_id)


async def record_event(
    session: AsyncSession, event: ev.StoreEventIn, contact_id: int, payload: dict[str, Any]
) -> bool:
    """Store the raw event; False if an event with this id is already stored."""
    stmt = (
        insert_for(session, StoreEvent)
        .values(
            id=event.id,
            type=event.type,
            contact_id=contact_id,
            occurred_at=event.occurred_at,
            received_at=utcnow(),
            payload=payload,
            product_id=product.id if (product := ev.product_of(event)) else None,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    return rowcount(await session.execute(stmt)) > 0


async def mark_routed(session: AsyncSession, event_id: str) -> None:
    await session.execute(
        update(StoreEvent).where(StoreEvent.id == event_id).values(routed_at=utcnow())
    )


def follow_up_id(source_event_id: str, type: str) -> str:
    """The id of the internal event of `type` caused by an event: the same on every replay."""
    candidate = f"{source_event_id}:{type}"
    if len(candidate) <= 128:
        return candidate
    return f"{hashlib.sha256(source_event_id.encode()).hexdigest()[:64]}:{type}"


async def record_follow_up(
    session: AsyncSession, follow_up: ev.StoreEventIn, contact_id: int
) -> None:
    await record_event(session, follow_up, contact_id, follow_up.model_dump(mode="json"))


async def follow_ups(session: AsyncSession, event_id: str) -> list[ev.StoreEventIn]:
    """The internal events that event `event_id` caused and that are not routed yet: route
    each like a store event, then `mark_routed` it, before marking `event_id` routed."""
    ids = [follow_up_id(event_id, type) for type in ev.INTERNAL_EVENT_TYPES]
    rows = await session.scalars(
        select(StoreEvent)
        .where(StoreEvent.id.in_(ids), StoreEvent.routed_at.is_(None))
        .order_by(StoreEvent.occurred_at, StoreEvent.id)
    )
    return [ev.stored_event_adapter.validate_python(row.payload) for row in rows]


def unique_event_id(kind: str, reference: str) -> str:
    """`kind:reference:nonce`, within the 128 characters of an event id: an action a person
    takes again (an unsubscribe, a complaint) is an event again, never a duplicate of the first."""
    nonce = secrets.token_urlsafe(9)
    return f"{f'{kind}:{reference}'[: 127 - len(nonce)]}:{nonce}"
