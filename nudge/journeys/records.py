"""The journeys' rows: which workflow runs exist for a contact and flow, for re-entry rules,
exit goals and the API's journey listing (Temporal holds their state)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.storage.db import insert_for
from nudge.storage.models import (
    JourneyRecord,
    StoreEvent,
    utcnow,
)


async def record_journey(
    session: AsyncSession,
    *,
    workflow_id: str,
    run_id: str,
    flow: str,
    contact_id: int,
    event_id: str,
) -> None:
    stmt = (
        insert_for(session, JourneyRecord)
        .values(
            workflow_id=workflow_id,
            run_id=run_id,
            flow=flow,
            contact_id=contact_id,
            trigger_event_id=event_id,
            started_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["workflow_id", "run_id"])
    )
    await session.execute(stmt)


async def open_journeys(
    session: AsyncSession, contact_id: int, flows: Sequence[str]
) -> list[JourneyRecord]:
    result = await session.scalars(
        select(JourneyRecord).where(
            JourneyRecord.contact_id == contact_id,
            JourneyRecord.flow.in_(flows),
            JourneyRecord.closed_at.is_(None),
        )
    )
    return list(result)


async def any_open_without_prefix(session: AsyncSession, prefix: str) -> bool:
    """Whether an open journey's id lacks `prefix` (one started before installation ids)."""
    found = await session.scalar(
        select(JourneyRecord.id)
        .where(JourneyRecord.closed_at.is_(None), ~JourneyRecord.workflow_id.startswith(prefix))
        .limit(1)
    )
    return found is not None


async def open_journey(session: AsyncSession, workflow_id: str) -> JourneyRecord | None:
    """The latest open run recorded under `workflow_id`, if any."""
    result: JourneyRecord | None = await session.scalar(
        select(JourneyRecord)
        .where(JourneyRecord.workflow_id == workflow_id, JourneyRecord.closed_at.is_(None))
        .order_by(JourneyRecord.started_at.desc(), JourneyRecord.id.desc())
        .limit(1)
    )
    return result


async def previous_journeys(
    session: AsyncSession, flow: str, contact_id: int
) -> list[tuple[str, datetime]]:
    """The contact's journeys of `flow`: (workflow id, when the event that started it occurred),
    for the flow's re-entry rule. A journey started by a segment entry has no stored event; its
    start time stands in."""
    rows = await session.execute(
        select(
            JourneyRecord.workflow_id,
            func.coalesce(StoreEvent.occurred_at, JourneyRecord.started_at),
        )
        .outerjoin(StoreEvent, StoreEvent.id == JourneyRecord.trigger_event_id)
        .where(JourneyRecord.flow == flow, JourneyRecord.contact_id == contact_id)
    )
    return [(wid, at) for wid, at in rows.all()]


async def close_journey(session: AsyncSession, journey_id: int) -> None:
    await session.execute(
        update(JourneyRecord).where(JourneyRecord.id == journey_id).values(closed_at=utcnow())
    )


async def journeys_of(
    session: AsyncSession, contact_id: int, limit: int = 50
) -> list[JourneyRecord]:
    result = await session.scalars(
        select(JourneyRecord)
        .where(JourneyRecord.contact_id == contact_id)
        .order_by(JourneyRecord.started_at.desc(), JourneyRecord.id.desc())
        .limit(limit)
    )
    return list(result)
