"""Segments on a seeded store, on SQLite and on PostgreSQL: the same members on both.

The seeded store is ~20 contacts with orders, carts, product views, emails and opens at fixed
times relative to a fixed `NOW`; every built-in segment and every condition kind is checked for
its exact members among them. Tests that need a population of their own (RFM ranks everyone, a
bulk refresh moves everyone) run on a fresh database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from nudge.contacts import directory
from nudge.events import schemas as ev
from nudge.segments import catalogue, compiler, membership, rfm
from nudge.segments.definition import dump, is_time_based, parse, uses_rfm
from nudge.storage.db import create_engine, migrate_async, session_maker
from nudge.storage.models import (
    Cart,
    CartLine,
    Consent,
    Contact,
    ContactTag,
    Message,
    MessageEvent,
    Order,
    Segment,
    SegmentChange,
    SegmentMember,
    StoreEvent,
)

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest_asyncio.fixture(loop_scope="session", params=["sqlite", "postgres"])
async def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sessions]:
    """A database of its own, migrated from nothing, for tests that look at everyone."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        await migrate_async(url)
        engine = create_engine(url)
        yield session_maker(engine)
        await engine.dispose()
        return
    base = make_url(str(request.getfixturevalue("postgres_url")))
    name = f"nudge_fresh_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(
        host=base.host, port=base.port or 5432, user=base.username, database=base.database
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = base.set(database=name).render_as_string(hide_password=False)
        await migrate_async(url)
        engine = create_engine(url)
        yield session_maker(engine)
        await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# ---- the seeded store ----------------------------------------------------------------------


@dataclass
class Store:
    ids: dict[str, int]  # contact name -> id
    product: str  # the product `uma` viewed
    tag: str  # the tag `uma` has

    @property
    def names(self) -> dict[int, str]:
        return {cid: name for name, cid in self.ids.items()}

    def members(self, ids: set[int]) -> set[str]:
        """The seeded contacts among `ids`, by name (the database holds other tests' too)."""
        return {self.names[i] for i in ids if i in self.names}


# name: (created days ago, consent, consent set days ago, properties)
CONTACTS: dict[str, tuple[int, str, int | None, dict[str, Any]]] = {
    "ana": (400, Consent.IMPLIED, None, {}),
    "bea": (400, Consent.IMPLIED, None, {}),
    "carla": (400, Consent.IMPLIED, None, {}),
    "dora": (400, Consent.IMPLIED, None, {}),
    "eva": (400, Consent.IMPLIED, None, {}),
    "fay": (400, Consent.IMPLIED, None, {}),
    "gil": (400, Consent.IMPLIED, None, {}),
    "hal": (400, Consent.IMPLIED, None, {}),
    "ivo": (400, Consent.IMPLIED, None, {}),
    "jo": (400, Consent.IMPLIED, None, {}),
    "kim": (400, Consent.IMPLIED, None, {}),
    "lea": (400, Consent.IMPLIED, None, {}),
    "max": (400, Consent.IMPLIED, None, {}),
    "ned": (400, Consent.IMPLIED, None, {}),
    "oli": (400, Consent.IMPLIED, None, {}),
    "pia": (100, Consent.IMPLIED, None, {}),
    "quin": (400, Consent.IMPLIED, None, {}),
    "rui": (400, Consent.SUBSCRIBED, 3, {}),
    "sara": (400, Consent.SUBSCRIBED, 20, {}),
    "tom": (400, Consent.UNSUBSCRIBED, 2, {}),
    "uma": (
        400,
        Consent.IMPLIED,
        None,
        {"age": 34, "city": "Lisbon", "vip": True, "birthday": "1990-04-02"},
    ),
    "vic": (400, Consent.IMPLIED, None, {"age": "34", "city": "Porto", "vip": False}),
}
EVERYONE = set(CONTACTS)


async def seed(sessions: Sessions) -> Store:
    run = uuid.uuid4().hex[:10]
    product, tag = f"p_{run}", f"tag-{run}"
    ids: dict[str, int] = {}
    async with sessions.begin() as session:
        for name, (created, consent, consent_days, properties) in CONTACTS.items():
            contact = Contact(
                email=f"{name}.{run}@seed.example",
                first_name=name.capitalize(),
                consent=consent,
                consent_updated_at=ago(consent_days) if consent_days is not None else None,
                properties=properties,
                created_at=ago(created),
                updated_at=ago(1),
            )
            session.add(contact)
            await session.flush()
            ids[name] = contact.id

        def order(name: str, days: float, total: str, status: str = "placed", **kw: Any) -> None:
            session.add(
                Order(
                    id=f"o_{uuid.uuid4().hex[:12]}",
                    contact_id=ids[name],
                    currency="EUR",
                    total=Decimal(total),
                    placed_at=ago(days),
                    status=status,
                    **kw,
                )
            )

        def cart(name: str, days: float, lines: int = 1) -> str:
            token = f"c_{uuid.uuid4().hex[:12]}"
            session.add(
                Cart(token=token, contact_id=ids[name], currency="EUR", updated_at=ago(days))
            )
            for i in range(lines):
                session.add(
                    CartLine(
                        cart_token=token,
                        position=i,
                        product_id="p1",
                        title="Linen shirt",
                        price=Decimal("49.00"),
                        quantity=1,
                    )
                )
            return token

        def view(name: str, days: float, product_id: str) -> None:
            session.add(
                StoreEvent(
                    id=f"evt_{uuid.uuid4().hex[:12]}",
                    type="product_viewed",
                    contact_id=ids[name],
                    occurred_at=ago(days),
                    payload={"product": {"id": product_id}},
                    product_id=product_id,
                )
            )

        def email(name: str, days: float) -> str:
            mid = f"{uuid.uuid4().hex}@seed.example"
            session.add(
                Message(
                    message_id=mid,
                    workflow_id=f"wf_{uuid.uuid4().hex[:8]}",
                    trigger_event_id="evt",
                    step="cart_1",
                    flow="cart_abandonment",
                    contact_id=ids[name],
                    template="cart_1",
                    status="sent",
                    sent_at=ago(days),
                )
            )
            return mid

        def engage(name: str, days: float, kind: str = "open", machine: bool = False) -> None:
            session.add(
                MessageEvent(
                    message_id=email(name, days + 1),
                    contact_id=ids[name],
                    kind=kind,
                    at=ago(days),
                    machine=machine,
                )
            )

        for days in (10, 20, 40):
            order("ana", days, "50.00")  # 3 orders, 150.00: VIP by count
        order("bea", 100, "600.00")  # 1 order, 600.00: VIP by spend, lapsed 90
        order("carla", 35, "20.00")
        order("carla", 70, "20.00")  # repeat buyer, lapsed 30 only
        order("dora", 65, "30.00")  # one-time, lapsed 30 and 60
        order("eva", 5, "1000.00", status="refunded")  # refunded: counts for nothing
        order("eva", 200, "10.00")
        cart("fay", 2)  # an open cart: abandoner
        gil_cart = cart("gil", 3)
        order("gil", 3, "49.00", cart_token=gil_cart)  # bought that cart
        cart("hal", 10)  # too old
        cart("ivo", 1, lines=0)  # emptied
        cart("jo", 2)
        order("jo", 1, "15.00")  # bought something else since
        engage("kim", 5)  # a human open
        engage("lea", 5, machine=True)  # a privacy proxy's open
        engage("max", 40, kind="click")
        email("ned", 100)  # mailed, never engaged, known for long: unengaged
        email("oli", 100)
        engage("oli", 90)
        email("pia", 50)  # too new to be unengaged
        email("quin", 200)  # not mailed in the window
        view("uma", 3, product)
        view("vic", 10, "p_other")
        session.add(ContactTag(contact_id=ids["uma"], tag=tag))
        session.add(ContactTag(contact_id=ids["vic"], tag="retail"))
    return Store(ids, product, tag)


@pytest_asyncio.fixture(loop_scope="session")
async def store(sessions: Sessions) -> Store:
    return await seed(sessions)


async def members(
    sessions: Sessions, store: Store, definition: Any, now: datetime = NOW
) -> set[str]:
    condition = parse(definition)
    async with sessions() as session:
        found = set((await session.scalars(compiler.compile_segment(condition, now))).all())
        # The same answer one contact at a time, as incremental evaluation asks it.
        one_by_one = {
            cid
            for cid in store.ids.values()
            if (await session.scalars(compiler.compile_segment(condition, now, cid))).all() == [cid]
        }
    assert store.members(found) == store.members(one_by_one)
    return store.members(found)


# ---- built-in segments ---------------------------------------------------------------------

BUILTIN_MEMBERS = {
    "vip": {"ana", "bea"},
    "one_time_buyers": {"bea", "dora", "eva", "gil", "jo"},
    "repeat_buyers": {"ana", "carla"},
    "cart_abandoners": {"fay"},
    "lapsed_30": {"bea", "carla", "dora", "eva"},
    "lapsed_60": {"bea", "dora", "eva"},
    "lapsed_90": {"bea", "eva"},
    "engaged_30": {"kim"},
    "unengaged_180": {"ned", "lea"},  # a privacy proxy's open is no engagement
    "new_subscribers": {"rui"},
}


def test_every_builtin_is_checked() -> None:
    assert set(BUILTIN_MEMBERS) == catalogue.BUILTIN_IDS


@pytest.mark.parametrize("segment_id", sorted(BUILTIN_MEMBERS))
async def test_builtin_segment_members(sessions: Sessions, store: Store, segment_id: str) -> None:
    [builtin] = [b for b in catalogue.BUILTINS if b.id == segment_id]
    assert await members(sessions, store, builtin.definition) == BUILTIN_MEMBERS[segment_id]


async def test_builtins_are_stored_once_with_their_members(fresh: Sessions) -> None:
    store = await seed(fresh)
    async with fresh.begin() as session:
        assert set(await catalogue.ensure_builtin_segments(session, NOW)) == catalogue.BUILTIN_IDS
    async with fresh.begin() as session:
        assert await catalogue.ensure_builtin_segments(session, NOW) == []  # idempotent
        rows = {s.id: s for s in await catalogue.list_segments(session)}
        stored = {
            sid: store.members(
                {m.id for m in await catalogue.members_page(session, sid, after=None, limit=100)}
            )
            for sid in catalogue.BUILTIN_IDS
        }
        # The first members are recorded as entries, but start no flow.
        assert await membership.pending_entries(session, catalogue.BUILTIN_IDS) == []
    # The bulk path (INSERT ... SELECT) agrees with the query, segment by segment.
    assert stored == BUILTIN_MEMBERS
    for builtin in catalogue.BUILTINS:
        row = rows[builtin.id]
        assert row.builtin and row.definition == dump(parse(builtin.definition))
    time_based = {sid for sid in catalogue.BUILTIN_IDS if rows[sid].time_based}
    assert time_based == catalogue.BUILTIN_IDS - {"vip", "one_time_buyers", "repeat_buyers"}

    # A built-in whose definition changed in the code is updated and recomputed.
    async with fresh.begin() as session:
        stale = await session.get(Segment, "vip")
        assert stale is not None
        stale.definition = {"kind": "orders", "count": {"gte": 1}}
    async with fresh.begin() as session:
        await catalogue.ensure_builtin_segments(session, NOW)
    async with fresh() as session:
        vip = {m.id for m in await catalogue.members_page(session, "vip", after=None, limit=100)}
        updated = await session.get(Segment, "vip")
    assert store.members(vip) == BUILTIN_MEMBERS["vip"]
    assert updated is not None
    assert updated.definition == dump(parse(catalogue.BUILTINS[0].definition))


# ---- every condition kind, and and/or/not --------------------------------------------------


def custom_cases(store: Store) -> list[tuple[Any, set[str]]]:
    no_order_60 = EVERYONE - {"ana", "carla", "gil", "jo"}
    return [
        ({"kind": "orders", "count": {"gte": 3}, "within_days": 30}, set()),
        ({"kind": "orders", "count": {"gte": 3}, "within_days": 45}, {"ana"}),
        (
            {"kind": "orders", "count": {"gte": 1, "lt": 3}},
            {"bea", "carla", "dora", "eva", "gil", "jo"},
        ),
        ({"kind": "orders", "total": {"gt": "500"}}, {"bea"}),
        # Exact money on both backends: 3 x 50.00 is 150.00, not 149.99999.
        ({"kind": "orders", "total": {"gte": "150.00"}}, {"ana", "bea"}),
        ({"kind": "orders", "total": {"gt": "150.00"}}, {"bea"}),
        ({"kind": "orders", "count": {"eq": 0}, "within_days": 60}, no_order_60),
        ({"kind": "last_order", "older_than_days": 150}, {"eva"}),
        ({"kind": "viewed_product", "product_id": store.product, "within_days": 7}, {"uma"}),
        ({"kind": "viewed_product", "product_id": store.product, "within_days": 2}, set()),
        ({"kind": "viewed_product", "within_days": 30}, {"uma", "vic"}),
        ({"kind": "property", "name": "age", "op": "gt", "value": 30}, {"uma"}),
        ({"kind": "property", "name": "age", "op": "lte", "value": 34.0}, {"uma"}),
        ({"kind": "property", "name": "age", "op": "lt", "value": 2**53}, {"uma"}),
        ({"kind": "property", "name": "age", "op": "eq", "value": "34"}, {"vic"}),
        ({"kind": "property", "name": "city", "op": "eq", "value": "Lisbon"}, {"uma"}),
        ({"kind": "property", "name": "city", "op": "ne", "value": "Lisbon"}, EVERYONE - {"uma"}),
        ({"kind": "property", "name": "vip", "op": "eq", "value": True}, {"uma"}),
        ({"kind": "property", "name": "vip", "op": "eq", "value": False}, {"vic"}),
        (
            {"not": {"kind": "property", "name": "vip", "op": "eq", "value": True}},
            EVERYONE - {"uma"},
        ),
        ({"kind": "property", "name": "birthday", "op": "lt", "value": "1995-01-01"}, {"uma"}),
        ({"kind": "property", "name": "age", "op": "exists"}, {"uma", "vic"}),
        ({"kind": "tag", "tag": store.tag}, {"uma"}),
        ({"kind": "consent", "in": ["unsubscribed"]}, {"tom"}),
        ({"kind": "consent", "in": ["subscribed"]}, {"rui", "sara"}),
        (
            {"kind": "consent", "in": ["subscribed", "unsubscribed"], "within_days": 7},
            {"rui", "tom"},
        ),
        ({"kind": "engagement", "within_days": 60, "kinds": ["click"]}, {"max"}),
        ({"kind": "engagement", "within_days": 100}, {"kim", "max", "oli"}),
        (
            {"kind": "emails_received", "count": {"gte": 1}},
            {"kim", "lea", "max", "ned", "oli", "pia", "quin"},
        ),
        (
            {"kind": "emails_received", "count": {"eq": 0}, "within_days": 150},
            EVERYONE - {"kim", "lea", "max", "ned", "oli", "pia"},
        ),
        ({"kind": "cart_open", "within_days": 12}, {"fay", "hal"}),
        ({"kind": "created", "within_days": 200}, {"pia"}),
        ({"kind": "created", "older_than_days": 200}, EVERYONE - {"pia"}),
        (
            {
                "all": [
                    {"kind": "orders", "count": {"gte": 2}},
                    {"not": {"kind": "last_order", "older_than_days": 30}},
                ]
            },
            {"ana"},
        ),
        (
            {
                "any": [
                    {"kind": "tag", "tag": store.tag},
                    {"kind": "consent", "in": ["unsubscribed"]},
                ]
            },
            {"uma", "tom"},
        ),
        # `not` of a never-buyer's "lapsed" is true: no NULL leaks through a negation.
        (
            {
                "not": {
                    "any": [
                        {"kind": "last_order", "older_than_days": 30},
                        {"kind": "orders", "count": {"gte": 1}},
                    ]
                }
            },
            EVERYONE - {"ana", "bea", "carla", "dora", "eva", "gil", "jo"},
        ),
    ]


async def test_custom_definitions(sessions: Sessions, store: Store) -> None:
    for definition, expected in custom_cases(store):
        assert await members(sessions, store, definition) == expected, definition


async def test_properties_tags_and_locale_from_events(sessions: Sessions) -> None:
    email = f"pat.{uuid.uuid4().hex[:8]}@example.com"
    tag = f"t-{uuid.uuid4().hex[:8]}"
    first = {"email": email, "locale": "pt-PT", "properties": {"plan": "gold", "age": 30}}
    async with sessions.begin() as session:
        cid = await directory.upsert_contact(
            session, ev.ContactIn.model_validate(first | {"tags": [tag, "a-b_c"]})
        )
    async with sessions.begin() as session:
        # Merged key by key; tags only ever added.
        await directory.upsert_contact(
            session,
            ev.ContactIn.model_validate(
                {"email": email, "properties": {"age": 31, "vip": True}, "tags": [tag]}
            ),
        )
    async with sessions() as session:
        contact = await session.get(Contact, cid)
        tags = set(
            (
                await session.scalars(select(ContactTag.tag).where(ContactTag.contact_id == cid))
            ).all()
        )
        matched = (
            await session.scalars(
                compiler.compile_segment(
                    parse(
                        {
                            "all": [
                                {"kind": "property", "name": "age", "op": "eq", "value": 31},
                                {"kind": "property", "name": "plan", "op": "eq", "value": "gold"},
                                {"kind": "tag", "tag": tag},
                            ]
                        }
                    ),
                    NOW,
                    cid,
                )
            )
        ).all()
    assert contact is not None
    assert contact.properties == {"plan": "gold", "age": 31, "vip": True}
    assert contact.locale == "pt-PT"
    assert tags == {tag, "a-b_c"}
    assert matched == [cid]


@pytest.mark.parametrize(
    ("contact", "field"),
    [
        ({"locale": "portuguese!"}, "locale"),
        ({"properties": {"Bad Key": 1}}, "properties.Bad Key.[key]"),
        ({"properties": {f"k{i}": i for i in range(51)}}, "properties"),
        ({"properties": {"nested": {"a": 1}}}, "properties.nested.bool"),
        ({"tags": ["UPPER"]}, "tags.0"),
        ({"tags": [f"t{i}" for i in range(51)]}, "tags"),
    ],
)
def test_contact_fields_are_validated(contact: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ev.ContactIn.model_validate({"email": "a@example.com"} | contact)
    assert field in [".".join(str(p) for p in e["loc"]) for e in err.value.errors()]


def test_one_contact_is_looked_up_not_scanned(engine: AsyncEngine) -> None:
    """Restricted to one contact, every per-contact aggregate is filtered by that contact
    inside its GROUP BY, so it is an index range scan, never a pass over all orders."""
    condition = parse(
        {
            "all": [
                {"kind": "orders", "count": {"gte": 1}, "within_days": 30},
                {"kind": "last_order", "older_than_days": 5},
                {"kind": "emails_received", "count": {"gte": 1}},
            ]
        }
    )
    sql = str(compiler.compile_segment(condition, NOW, 42).compile(dialect=engine.dialect))
    assert sql.count("GROUP BY") == 3
    assert sql.count("orders.contact_id = ") == 2
    assert sql.count("messages.contact_id = ") == 1
    whole = str(compiler.compile_segment(condition, NOW).compile(dialect=engine.dialect))
    assert "orders.contact_id = " not in whole


async def test_money_sums_are_exact(sessions: Sessions) -> None:
    """0.10 + 0.20 is 0.30: SQLite keeps amounts as REAL, so sums are taken in whole cents."""
    cid = await new_contact(sessions)
    await add_order(sessions, cid, ago(1), "0.10")
    await add_order(sessions, cid, ago(2), "0.20")
    async with sessions() as session:
        for bounds in ({"lte": "0.30"}, {"gte": "0.30"}, {"eq": "0.30"}):
            query = compiler.compile_segment(parse({"kind": "orders", "total": bounds}), NOW, cid)
            assert (await session.scalars(query)).all() == [cid], bounds
        assert (await rfm.rfm_scores(session, NOW, [cid]))[cid].spent == Decimal("0.30")

    # And the largest amounts an order can carry add up without overflowing.
    rich = await new_contact(sessions)
    await add_order(sessions, rich, ago(1), "9999999999.99")
    await add_order(sessions, rich, ago(2), "9999999999.99")
    async with sessions() as session:
        query = compiler.compile_segment(
            parse({"kind": "orders", "total": {"gte": "9999999999.99"}}), NOW, rich
        )
        assert (await session.scalars(query)).all() == [rich]
        assert (await rfm.rfm_scores(session, NOW, [rich]))[rich].spent == Decimal("19999999999.98")


# ---- membership that moves -----------------------------------------------------------------


async def new_contact(sessions: Sessions) -> int:
    async with sessions.begin() as session:
        return await directory.upsert_contact(
            session, ev.ContactIn(email=f"m.{uuid.uuid4().hex[:10]}@example.com")
        )


async def add_order(
    sessions: Sessions, contact_id: int, placed_at: datetime, total: str = "20.00"
) -> None:
    async with sessions.begin() as session:
        session.add(
            Order(
                id=f"o_{uuid.uuid4().hex[:12]}",
                contact_id=contact_id,
                currency="EUR",
                total=Decimal(total),
                placed_at=placed_at,
            )
        )


def builtin_changes(changes: list[membership.MembershipChange]) -> list[tuple[str, str]]:
    # Other tests create segments in the shared database; look at the built-ins only.
    return [(c.segment_id, c.change) for c in changes if c.segment_id in catalogue.BUILTIN_IDS]


async def test_refresh_contact_enters_and_exits(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        await catalogue.ensure_builtin_segments(session, NOW)
    cid = await new_contact(sessions)
    async with sessions.begin() as session:
        assert builtin_changes(await membership.refresh_contact(session, cid, NOW)) == []

    await add_order(sessions, cid, ago(1))
    async with sessions.begin() as session:
        first = await membership.refresh_contact(session, cid, NOW, triggers={"repeat_buyers"})
    assert builtin_changes(first) == [("one_time_buyers", "entered")]

    await add_order(sessions, cid, ago(0.5))
    later = NOW + timedelta(minutes=1)
    async with sessions.begin() as session:
        second = await membership.refresh_contact(session, cid, later, triggers={"repeat_buyers"})
        # Nothing changed since: nothing recorded.
        assert await membership.refresh_contact(session, cid, later) == []
    assert builtin_changes(second) == [
        ("one_time_buyers", "exited"),
        ("repeat_buyers", "entered"),
    ]

    async with sessions() as session:
        current = {sid for sid, _, _ in await catalogue.segments_of(session, cid)}
        recorded = (
            await session.execute(
                select(
                    SegmentChange.segment_id,
                    SegmentChange.change,
                    SegmentChange.at,
                    SegmentChange.routed_at,
                )
                .where(SegmentChange.contact_id == cid)
                .order_by(SegmentChange.id)
            )
        ).all()
        pending = await membership.pending_entries(session, {"repeat_buyers"}, contact_id=cid)
    assert current & catalogue.BUILTIN_IDS == {"repeat_buyers"}
    assert [(r[0], r[1], r[2], r[3]) for r in recorded if r[0] in catalogue.BUILTIN_IDS] == [
        ("one_time_buyers", "entered", NOW, NOW),
        ("one_time_buyers", "exited", later, later),
        # An entry into a segment that triggers a flow waits in the outbox.
        ("repeat_buyers", "entered", later, None),
    ]
    [entry] = pending
    assert (entry.segment_id, entry.contact_id, entry.at) == ("repeat_buyers", cid, later)
    async with sessions.begin() as session:
        await membership.mark_routed(session, [entry.change_id], later)
    async with sessions() as session:
        assert await membership.pending_entries(session, {"repeat_buyers"}, contact_id=cid) == []


async def test_refresh_time_based_moves_contacts_as_time_passes(fresh: Sessions) -> None:
    async with fresh.begin() as session:
        await catalogue.ensure_builtin_segments(session, NOW)
    lapsing, recent = await new_contact(fresh), await new_contact(fresh)
    await add_order(fresh, lapsing, ago(29))
    await add_order(fresh, recent, ago(1))
    async with fresh.begin() as session:
        await membership.refresh_contact(session, lapsing, NOW)
        await membership.refresh_contact(session, recent, NOW)
        assert (await membership.refresh_time_based(session, NOW))[
            "lapsed_30"
        ] == membership.RefreshCounts(0, 0)

    # Two days on, with no event at all, the first contact has lapsed.
    later = NOW + timedelta(days=2)
    async with fresh.begin() as session:
        counts = await membership.refresh_time_based(session, later, triggers={"lapsed_30"})
    assert counts["lapsed_30"] == membership.RefreshCounts(entered=1, exited=0)
    assert "vip" not in counts  # not time-based: moved by events only
    async with fresh() as session:
        assert {sid for sid, _, _ in await catalogue.segments_of(session, lapsing)} == {
            "one_time_buyers",
            "lapsed_30",
        }
        [entry] = await membership.pending_entries(session, {"lapsed_30"})
        assert (entry.contact_id, entry.at) == (lapsing, later)

    # An order brings them back at once (per event), and the schedule agrees.
    await add_order(fresh, lapsing, later - timedelta(hours=1))
    async with fresh.begin() as session:
        changes = await membership.refresh_contact(session, lapsing, later)
        assert [(c.segment_id, c.change) for c in changes] == [
            ("lapsed_30", "exited"),
            ("one_time_buyers", "exited"),
            ("repeat_buyers", "entered"),
        ]
        assert all(
            c == membership.RefreshCounts(0, 0)
            for c in (await membership.refresh_time_based(session, later)).values()
        )

    # Far enough on, both have lapsed 90 days; the bulk refresh records every move.
    much_later = NOW + timedelta(days=100)
    async with fresh.begin() as session:
        counts = await membership.refresh_time_based(session, much_later)
    assert {sid: (c.entered, c.exited) for sid, c in counts.items() if c.entered or c.exited} == {
        "lapsed_30": (2, 0),
        "lapsed_60": (2, 0),
        "lapsed_90": (2, 0),
    }
    async with fresh() as session:
        moves = await session.scalar(
            select(func.count()).select_from(SegmentChange).where(SegmentChange.at == much_later)
        )
        members_90 = await catalogue.member_count(session, "lapsed_90")
    assert (moves, members_90) == (6, 2)


async def test_a_new_segment_gets_its_members_at_once(fresh: Sessions) -> None:
    ids = [await new_contact(fresh) for _ in range(3)]
    await add_order(fresh, ids[0], ago(1), "700.00")
    await add_order(fresh, ids[1], ago(1), "100.00")
    async with fresh.begin() as session:
        await catalogue.create_segment(
            session,
            "big_spenders",
            "Big spenders",
            parse({"kind": "orders", "total": {"gte": "500"}}),
            NOW,
        )
    async with fresh() as session:
        page = await catalogue.members_page(session, "big_spenders", after=None, limit=10)
        # The first members are recorded, but start no flow.
        assert await membership.pending_entries(session, {"big_spenders"}) == []
        row = await session.get(Segment, "big_spenders")
    assert [m.id for m in page] == [ids[0]]
    assert row is not None and not row.builtin and not row.time_based


# ---- RFM -----------------------------------------------------------------------------------


async def test_rfm_scores_are_quintiles_with_ties_sharing_a_score(fresh: Sessions) -> None:
    # Ten buyers: buyer i (0-9) last ordered i days ago, placed 1 + i // 2 orders (so pairs tie
    # on frequency), and spent 10 * (i + 1).
    buyers = [await new_contact(fresh) for _ in range(10)]
    never = await new_contact(fresh)
    for i, cid in enumerate(buyers):
        count = 1 + i // 2
        for n in range(count):
            total = Decimal(10 * (i + 1)) / count
            await add_order(fresh, cid, ago(i + 30 * n), str(total.quantize(Decimal("0.01"))))
    refunded = buyers[0]
    async with fresh.begin() as session:
        session.add(
            Order(
                id=f"o_{uuid.uuid4().hex[:12]}",
                contact_id=refunded,
                currency="EUR",
                total=Decimal("9999.00"),
                placed_at=ago(0),
                status="refunded",
            )
        )
    async with fresh() as session:
        scores = await rfm.rfm_scores(session, NOW)
        some = await rfm.rfm_scores(session, NOW, [buyers[9], never])
    assert never not in scores
    # Recency: buyer 0 is the most recent (rank 10 of 10 by last order) -> 5.
    assert [scores[c].recency for c in buyers] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    # Frequency: pairs tie and share the lower rank: ranks 1,1,3,3,5,5,7,7,9,9.
    assert [scores[c].frequency for c in buyers] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # Monetary: 10, 20, ... 100 spent (the refunded 9999 counts for nothing).
    assert [scores[c].monetary for c in buyers] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert scores[buyers[9]].spent == Decimal("100.00")
    assert scores[buyers[0]].orders == 1
    assert scores[buyers[3]].days_since_last_order == 3
    assert set(some) == {buyers[9]} and some[buyers[9]] == scores[buyers[9]]

    champions = parse({"kind": "rfm", "frequency": {"gte": 4}, "monetary": {"gte": 5}})
    assert is_time_based(champions) and uses_rfm(champions)
    async with fresh() as session:
        found = set((await session.scalars(compiler.compile_segment(champions, NOW))).all())
    assert found == {buyers[8], buyers[9]}


async def test_rfm_segments_are_left_to_the_schedule(fresh: Sessions) -> None:
    cid = await new_contact(fresh)
    await add_order(fresh, cid, ago(1))
    async with fresh.begin() as session:
        await catalogue.create_segment(
            session, "recent_rfm", "Recent", parse({"kind": "rfm", "recency": {"gte": 1}}), NOW
        )
        await session.execute(delete(SegmentMember))
        assert await membership.refresh_contact(session, cid, NOW) == []
        counts = await membership.refresh_time_based(session, NOW)
    assert counts["recent_rfm"] == membership.RefreshCounts(entered=1, exited=0)


async def test_the_largest_definitions_run_on_every_database(
    sessions: Sessions, store: Store
) -> None:
    """100 conditions, each with a window of its own (a derived table each, once): within the
    documented limits, so it runs, on SQLite too (at most 64 tables in a join), and means what
    it says."""
    orders = [{"kind": "orders", "count": {"gte": 1}, "within_days": 1000 + i} for i in range(49)]
    emails = [
        {"kind": "emails_received", "count": {"gte": 1}, "within_days": 1000 + i} for i in range(48)
    ]
    widest = {
        "any": [
            {"kind": "orders", "count": {"gte": 1}, "within_days": 1048},
            {"kind": "emails_received", "count": {"gte": 1}, "within_days": 1047},
        ]
    }
    expected = await members(sessions, store, widest)
    assert expected
    largest = {"any": [{"any": orders}, {"any": emails}]}
    assert await members(sessions, store, largest) == expected
