"""Segment membership that moves, and the outbox of entries that start journeys.

Membership is stored in `segment_members`, and every entry and exit in `segment_changes` with its
time. It moves when an event about a contact arrives (`refresh_contact`: one UNION ALL query over
every segment for that one contact), and on a schedule for segments whose membership changes with
the clock alone (`refresh_time_based`: set-based, INSERT ... SELECT and DELETE ... WHERE NOT
EXISTS). Entries into segments that a flow declares in `segment_triggers` are left unrouted
(`routed_at` NULL) until a journey has been started for them (`pending_entries`, `mark_routed`),
an outbox that survives crashes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    exists,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Executable
from sqlalchemy.sql.visitors import traverse

from nudge.segments.compiler import compile_segment
from nudge.segments.definition import Condition, parse, uses_rfm
from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import Segment, SegmentChange, SegmentMember, UTCDateTime


@dataclass(frozen=True)
class MembershipChange:
    segment_id: str
    contact_id: int
    change: Literal["entered", "exited"]
    change_id: int
    at: datetime


@dataclass
class RefreshCounts:
    entered: int = 0
    exited: int = 0


_parsed: dict[tuple[str, str], Condition] = {}


def _definition(segment_id: str, data: Mapping[str, Any]) -> Condition:
    # Parsed once per (segment, definition); refresh_contact runs for every event.
    key = (segment_id, repr(sorted(data.items())))
    if key not in _parsed:
        if len(_parsed) > 1000:
            _parsed.clear()
        _parsed[key] = parse(dict(data))
    return _parsed[key]


async def _segments(
    session: AsyncSession, *, time_based: bool | None = None
) -> list[tuple[str, Condition]]:
    query = select(Segment.id, Segment.definition).order_by(Segment.id)
    if time_based is not None:
        query = query.where(Segment.time_based.is_(time_based))
    rows = (await session.execute(query)).all()
    return [(sid, _definition(sid, definition)) for sid, definition in rows]


async def evaluate_contact(
    session: AsyncSession,
    contact_id: int,
    now: datetime,
    segments: Sequence[tuple[str, Condition]],
) -> set[str]:
    """The ids of `segments` the contact belongs to at `now`, in one UNION ALL query (built
    once per set of definitions: only its parameters change from one event to the next)."""
    found: set[str] = set()
    for query, windows in _union_of(segments):
        params = {f"since_{days}": now - timedelta(days=days) for days in windows}
        found.update((await session.scalars(query, params | {"contact_id": contact_id})).all())
    return found


# A statement (one SELECT, or a UNION ALL of them) and the time windows it takes as parameters.
_Built = tuple[Executable, set[int]]
_unions: dict[tuple[int, ...], tuple[Sequence[Any], list[_Built]]] = {}


def _union_of(segments: Sequence[tuple[str, Condition]]) -> list[_Built]:
    # Keyed by the identity of the parsed definitions (cached by `_definition`); the entry
    # holds them, so an id is never reused while its entry lives.
    key = tuple(id(condition) for _, condition in segments)
    if key not in _unions:
        if len(_unions) > 64:
            _unions.clear()
        built: list[_Built] = []
        for start in range(0, len(segments), 200):  # SQLite allows 500 terms in a compound
            chunk = segments[start : start + 200]
            windows: set[int] = set()
            parts = []
            for sid, condition in chunk:
                parts.append(
                    compile_segment(condition, _ANY_TIME, 0).with_only_columns(
                        literal(sid, String()).label("segment_id")
                    )
                )
                windows |= {
                    int(name.removeprefix("since_"))
                    for name in _bind_names(parts[-1])
                    if name.startswith("since_")
                }
            query: Executable = parts[0] if len(parts) == 1 else union_all(*parts)
            built.append((query, windows))
        _unions[key] = (segments, built)
    return _unions[key][1]


_ANY_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def _bind_names(statement: Any) -> set[str]:
    names: set[str] = set()
    traverse(statement, {}, {"bindparam": lambda bind: names.add(bind.key)})
    return names


async def refresh_contact(
    session: AsyncSession,
    contact_id: int,
    now: datetime,
    *,
    triggers: Collection[str] = (),
) -> list[MembershipChange]:
    """Recompute one contact's memberships of every segment (but RFM ones, which only the
    schedule refreshes); store and record what changed. Entries into segments in `triggers`
    are left unrouted, for the caller to start the flows they trigger."""
    segments = [(sid, c) for sid, c in await _segments(session) if not uses_rfm(c)]
    if not segments:
        return []
    member_of = await evaluate_contact(session, contact_id, now, segments)
    evaluated = {sid for sid, _ in segments}
    current = set(
        (
            await session.scalars(
                select(SegmentMember.segment_id).where(SegmentMember.contact_id == contact_id)
            )
        ).all()
    )
    changes: list[MembershipChange] = []
    for sid in sorted((current & evaluated) - member_of):
        gone = await session.execute(
            delete(SegmentMember).where(
                SegmentMember.segment_id == sid, SegmentMember.contact_id == contact_id
            )
        )
        if rowcount(gone):
            changes.append(await _record(session, sid, contact_id, "exited", now, routed=True))
    for sid in sorted(member_of - current):
        added = await session.execute(
            insert_for(session, SegmentMember)
            .values(segment_id=sid, contact_id=contact_id, entered_at=now)
            .on_conflict_do_nothing()
        )
        if rowcount(added):
            changes.append(
                await _record(session, sid, contact_id, "entered", now, routed=sid not in triggers)
            )
    return changes


async def _record(
    session: AsyncSession,
    segment_id: str,
    contact_id: int,
    change: Literal["entered", "exited"],
    at: datetime,
    *,
    routed: bool,
) -> MembershipChange:
    change_id = await session.scalar(
        insert(SegmentChange)
        .values(
            segment_id=segment_id,
            contact_id=contact_id,
            change=change,
            at=at,
            routed_at=at if routed else None,
        )
        .returning(SegmentChange.id)
    )
    assert change_id is not None
    return MembershipChange(segment_id, contact_id, change, int(change_id), at)


def _temporary(name: str) -> Table:
    return Table(
        name,
        MetaData(),
        Column("contact_id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
        prefixes=["TEMPORARY"],
    )


# The members a refresh computed, and those stored before it.
_staged, _current = _temporary("nudge_segment_staged"), _temporary("nudge_segment_current")


async def refresh_segment(
    session: AsyncSession,
    segment_id: str,
    condition: Condition,
    now: datetime,
    *,
    route_entries: bool = False,
) -> RefreshCounts:
    """Set-based refresh of one segment: its members at `now` and its stored members are staged
    in two temporary tables, then leavers are recorded and deleted, newcomers recorded and
    inserted, all in SQL. Entries stay unrouted only with `route_entries` (a segment's first
    members start no flow).

    No statement both reads `segment_members` and writes it: when its statistics are stale (a
    first computation, say), PostgreSQL may plan an anti-join that rescans the very pages the
    INSERT is appending, which is quadratic. The temporary tables are analysed instead."""
    # Created and dropped inside the caller's transaction: a failure rolls them back with the rest.
    connection = await session.connection()
    for table in (_staged, _current):
        await connection.run_sync(table.create)
    await session.execute(
        insert(_staged).from_select(["contact_id"], compile_segment(condition, now))
    )
    await session.execute(
        insert(_current).from_select(
            ["contact_id"],
            select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment_id),
        )
    )
    if connection.dialect.name == "postgresql":  # no autovacuum on temporary tables
        await session.execute(text(f"ANALYZE {_staged.name}, {_current.name}"))
    exited = await _exits(session, segment_id, now)
    entered = await _entries(session, segment_id, now, routed=not route_entries)
    for table in (_staged, _current):
        await connection.run_sync(table.drop)
    return RefreshCounts(entered=entered, exited=exited)


async def _exits(session: AsyncSession, segment_id: str, now: datetime) -> int:
    """Record and delete the stored members that are not staged; how many left."""
    staged, current = _staged.c.contact_id, _current.c.contact_id
    exited = await session.execute(
        insert(SegmentChange).from_select(
            ["segment_id", "contact_id", "change", "at", "routed_at"],
            select(
                literal(segment_id, String()),
                current,
                literal("exited", String()),
                literal(now, UTCDateTime()),
                literal(now, UTCDateTime()),
            ).where(~exists().where(staged == current)),
        )
    )
    await session.execute(
        delete(SegmentMember).where(
            SegmentMember.segment_id == segment_id,
            ~exists().where(staged == SegmentMember.contact_id),
        ),
        execution_options={"synchronize_session": False},  # no RETURNING of every leaver
    )
    return rowcount(exited)


async def _entries(session: AsyncSession, segment_id: str, now: datetime, *, routed: bool) -> int:
    """Record and insert the staged contacts that were not members; how many entered."""
    staged, current = _staged.c.contact_id, _current.c.contact_id
    stayed = exists().where(current == staged)
    entered = await session.execute(
        insert(SegmentChange).from_select(
            ["segment_id", "contact_id", "change", "at", "routed_at"],
            select(
                literal(segment_id, String()),
                staged,
                literal("entered", String()),
                literal(now, UTCDateTime()),
                literal(now if routed else None, UTCDateTime()),
            ).where(~stayed),
        )
    )
    await session.execute(
        insert_for(session, SegmentMember)
        .from_select(
            ["segment_id", "contact_id", "entered_at"],
            select(literal(segment_id, String()), staged, literal(now, UTCDateTime())).where(
                ~stayed
            ),
        )
        .on_conflict_do_nothing()
    )
    return rowcount(entered)


async def refresh_time_based(
    session: AsyncSession, now: datetime, *, triggers: Collection[str] = ()
) -> dict[str, RefreshCounts]:
    """Refresh every time-based segment (lapsed N days, engaged 30 days, RFM, ...) at `now`."""
    counts = {}
    for sid, condition in await _segments(session, time_based=True):
        counts[sid] = await refresh_segment(
            session, sid, condition, now, route_entries=sid in triggers
        )
    return counts


async def pending_entries(
    session: AsyncSession,
    segment_ids: Collection[str],
    *,
    contact_id: int | None = None,
    limit: int = 500,
) -> list[MembershipChange]:
    """Entries not yet routed to the flows they trigger (oldest first)."""
    if not segment_ids:
        return []
    query = (
        select(SegmentChange)
        .where(
            SegmentChange.routed_at.is_(None),
            SegmentChange.change == "entered",
            SegmentChange.segment_id.in_(list(segment_ids)),
        )
        .order_by(SegmentChange.id)
        .limit(limit)
    )
    if contact_id is not None:
        query = query.where(SegmentChange.contact_id == contact_id)
    return [
        MembershipChange(row.segment_id, row.contact_id, "entered", row.id, row.at)
        for row in await session.scalars(query)
    ]


async def mark_routed(session: AsyncSession, change_ids: Collection[int], at: datetime) -> None:
    if change_ids:
        await session.execute(
            update(SegmentChange).where(SegmentChange.id.in_(list(change_ids))).values(routed_at=at)
        )
