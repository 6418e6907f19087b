"""The segments Nudge has, and their members as the API reads them.

Built-in segments (`BUILTINS`: VIP, one-time and repeat buyers, cart abandoners, lapsed,
engaged, unengaged, new subscribers) are stored at start by `ensure_builtin_segments`; others
are created and deleted through the API. A segment's members are computed when it is stored
(recorded as entries that start no flow) and move afterwards by `membership`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.segments.compiler import compile_segment
from nudge.segments.definition import Condition, dump, is_time_based, parse
from nudge.segments.membership import refresh_segment
from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import Contact, Segment, SegmentMember, UTCDateTime

# ---- built-in segments ---------------------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    id: str
    name: str
    definition: Mapping[str, Any]


VIP_ORDERS = 3
VIP_SPEND = "500.00"
NEW_SUBSCRIBER_DAYS = 14

BUILTINS: tuple[Builtin, ...] = (
    Builtin(
        "vip",
        f"VIP: {VIP_ORDERS}+ orders or {VIP_SPEND} spent",
        {
            "any": [
                {"kind": "orders", "count": {"gte": VIP_ORDERS}},
                {"kind": "orders", "total": {"gte": VIP_SPEND}},
            ]
        },
    ),
    Builtin("one_time_buyers", "One-time buyers", {"kind": "orders", "count": {"eq": 1}}),
    Builtin("repeat_buyers", "Repeat buyers", {"kind": "orders", "count": {"gte": 2}}),
    Builtin(
        "cart_abandoners",
        "Cart abandoners: an open cart in the last 7 days",
        {"kind": "cart_open", "within_days": 7},
    ),
    *(
        Builtin(
            f"lapsed_{days}",
            f"Lapsed {days} days: last order over {days} days ago",
            {"kind": "last_order", "older_than_days": days},
        )
        for days in (30, 60, 90)
    ),
    Builtin(
        "engaged_30",
        "Engaged: opened or clicked in the last 30 days",
        {"kind": "engagement", "within_days": 30},
    ),
    Builtin(
        "unengaged_180",
        "Unengaged 180 days: known for 180+ days, mailed, no open or click in 180 days",
        {
            "all": [
                {"kind": "created", "older_than_days": 180},
                {"kind": "emails_received", "count": {"gte": 1}, "within_days": 180},
                {"not": {"kind": "engagement", "within_days": 180}},
            ]
        },
    ),
    Builtin(
        "new_subscribers",
        f"New subscribers: subscribed in the last {NEW_SUBSCRIBER_DAYS} days",
        {"kind": "consent", "in": ["subscribed"], "within_days": NEW_SUBSCRIBER_DAYS},
    ),
)
BUILTIN_IDS = frozenset(b.id for b in BUILTINS)


async def ensure_builtin_segments(session: AsyncSession, now: datetime) -> list[str]:
    """Store the built-in segments, or update those whose definition changed, and compute the
    members of each one stored or changed (recorded as entries, starting no flow). Idempotent
    and safe to race: the API and the worker both call it at start. Returns the ids touched."""
    stored = {
        sid: (definition, updated_at)
        for sid, definition, updated_at in (
            await session.execute(
                select(Segment.id, Segment.definition, Segment.updated_at).where(
                    Segment.id.in_([b.id for b in BUILTINS])
                )
            )
        ).all()
    }
    touched = []
    for builtin in BUILTINS:
        condition = parse(builtin.definition)
        definition = dump(condition)
        if builtin.id not in stored:
            result = await session.execute(
                insert_for(session, Segment)
                .values(
                    id=builtin.id,
                    name=builtin.name,
                    definition=definition,
                    builtin=True,
                    time_based=is_time_based(condition),
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
            )
        elif stored[builtin.id][0] != definition:
            result = await session.execute(
                update(Segment)
                .where(Segment.id == builtin.id, Segment.updated_at == stored[builtin.id][1])
                .values(
                    name=builtin.name,
                    definition=definition,
                    builtin=True,
                    time_based=is_time_based(condition),
                    updated_at=now,
                )
            )
        else:
            continue
        if rowcount(result):  # the winner of a race computes the members
            await refresh_segment(session, builtin.id, condition, now)
            touched.append(builtin.id)
    return touched


# ---- segments and members, as the API reads and writes them ---------------------------------

SegmentRow = Segment


async def get_segment(session: AsyncSession, segment_id: str) -> Segment | None:
    return await session.get(Segment, segment_id)


async def list_segments(session: AsyncSession) -> list[Segment]:
    return list(await session.scalars(select(Segment).order_by(Segment.id)))


async def create_segment(
    session: AsyncSession, segment_id: str, name: str, condition: Condition, now: datetime
) -> Segment:
    """Store a segment and compute its members (recorded as entries that start no flow)."""
    segment = Segment(
        id=segment_id,
        name=name,
        definition=dump(condition),
        builtin=False,
        time_based=is_time_based(condition),
        created_at=now,
        updated_at=now,
    )
    session.add(segment)
    await session.flush()
    await refresh_segment(session, segment_id, condition, now)
    return segment


async def delete_segment(session: AsyncSession, segment_id: str) -> None:
    # Members go with it (ON DELETE CASCADE); its recorded changes stay, as history.
    await session.execute(delete(SegmentMember).where(SegmentMember.segment_id == segment_id))
    await session.execute(delete(Segment).where(Segment.id == segment_id))


async def member_count(session: AsyncSession, segment_id: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(SegmentMember)
        .where(SegmentMember.segment_id == segment_id)
    )
    return int(count or 0)


async def member_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(SegmentMember.segment_id, func.count()).group_by(SegmentMember.segment_id)
    )
    return {sid: int(count) for sid, count in rows.all()}


@dataclass(frozen=True)
class Member:
    id: int
    email: str
    first_name: str | None
    entered_at: datetime


async def members_page(
    session: AsyncSession, segment_id: str, *, after: int | None, limit: int
) -> list[Member]:
    """Keyset pagination by contact id: stable while members come and go."""
    query = (
        select(Contact.id, Contact.email, Contact.first_name, SegmentMember.entered_at)
        .join(SegmentMember, SegmentMember.contact_id == Contact.id)
        .where(SegmentMember.segment_id == segment_id)
        .order_by(SegmentMember.contact_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(SegmentMember.contact_id > after)
    return [Member(*row) for row in (await session.execute(query)).all()]


async def preview(
    session: AsyncSession, condition: Condition, now: datetime, sample: int
) -> tuple[int, list[Member]]:
    """How many contacts match `condition` at `now`, and the first few by id (nothing stored),
    in one evaluation: the count is a window over every match, taken before the LIMIT."""
    query = (
        compile_segment(condition, now)
        .with_only_columns(
            Contact.id,
            Contact.email,
            Contact.first_name,
            literal(now, UTCDateTime()),
            func.count().over().label("matches"),
        )
        .order_by(Contact.id)
        .limit(sample)
    )
    rows = (await session.execute(query)).all()
    count = int(rows[0][-1]) if rows else 0
    return count, [Member(*row[:-1]) for row in rows]


async def segments_of(session: AsyncSession, contact_id: int) -> list[tuple[str, str, datetime]]:
    rows = await session.execute(
        select(Segment.id, Segment.name, SegmentMember.entered_at)
        .join(SegmentMember, SegmentMember.segment_id == Segment.id)
        .where(SegmentMember.contact_id == contact_id)
        .order_by(Segment.id)
    )
    return [(sid, name, entered_at) for sid, name, entered_at in rows.all()]
