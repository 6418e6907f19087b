"""The schema and the queries, on SQLite and on PostgreSQL (both migrated to head by Alembic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from nudge.commerce import orders
from nudge.contacts import directory
from nudge.events import schemas as ev
from nudge.mail import messages
from nudge.storage.models import Base, Cart, CartLine, Contact, Message, Order
from support import new_email, new_id

Sessions = async_sessionmaker[AsyncSession]


async def new_contact(sessions: Sessions) -> int:
    async with sessions.begin() as session:
        return await directory.upsert_contact(session, ev.ContactIn(email=new_email()))


# ---- schema --------------------------------------------------------------------------------


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []


async def test_compare_metadata_does_see_a_difference(engine: AsyncEngine) -> None:
    """The check above is not vacuous: a column the migrations lack is reported."""
    from sqlalchemy import Column, MetaData, String, Table

    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    Table("contacts", metadata, Column("nickname", String(50)), extend_existing=True)

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        found = await connection.run_sync(differences)
    assert [(d[0], d[2], d[3].name) for d in found] == [("add_column", "contacts", "nickname")]


# ---- contacts ------------------------------------------------------------------------------


async def test_upsert_contact_is_idempotent_and_case_insensitive(sessions: Sessions) -> None:
    local = new_email().split("@")[0]
    mixed = f"{local.capitalize()}@Example.COM"
    async with sessions.begin() as session:
        first = await directory.upsert_contact(
            session,
            ev.ContactIn.model_validate(
                {"email": mixed, "first_name": "Ana", "timezone": "Europe/Lisbon"}
            ),
        )
    async with sessions.begin() as session:
        again = await directory.upsert_contact(
            session, ev.ContactIn.model_validate({"email": f"{local}@example.com"})
        )
    async with sessions() as session:
        rows = list(
            await session.scalars(select(Contact).where(Contact.email == f"{local}@example.com"))
        )
        count = await session.scalar(
            select(func.count())
            .select_from(Contact)
            .where(func.lower(Contact.email) == f"{local}@example.com")
        )
    assert again == first
    assert count == 1
    [contact] = rows
    assert contact.id == first
    # A later event without a name keeps the one we know.
    assert (contact.first_name, contact.timezone) == ("Ana", "Europe/Lisbon")

    async with sessions.begin() as session:
        third = await directory.upsert_contact(
            session,
            ev.ContactIn.model_validate({"email": mixed.upper(), "first_name": "Ana Maria"}),
        )
    async with sessions() as session:
        updated = await session.get(Contact, first)
    assert third == first
    assert updated is not None
    assert (updated.email, updated.first_name, updated.timezone) == (
        f"{local}@example.com",
        "Ana Maria",
        "Europe/Lisbon",
    )
    assert updated.updated_at >= contact.updated_at

    # An explicit null is "not known here", never an instruction to forget.
    async with sessions.begin() as session:
        await directory.upsert_contact(
            session,
            ev.ContactIn.model_validate({"email": mixed, "first_name": None, "timezone": None}),
        )
    async with sessions() as session:
        kept = await session.get(Contact, first)
    assert kept is not None and (kept.first_name, kept.timezone) == ("Ana Maria", "Europe/Lisbon")


# ---- messages ------------------------------------------------------------------------------


def message_values(contact_id: int, wid: str, message_id: str) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "workflow_id": wid,
        "trigger_event_id": "evt_trigger",
        "step": "cart_1",
        "flow": "cart_abandonment",
        "contact_id": contact_id,
        "template": "cart_1",
    }


async def test_claim_message_twice_is_one_row(sessions: Sessions) -> None:
    contact_id = await new_contact(sessions)
    wid, mid = new_id("wf"), f"{new_id('m')}@shop.example"
    async with sessions.begin() as session:
        first = await messages.claim_message(session, message_values(contact_id, wid, mid))
        assert (first.message_id, first.status, first.attempts) == (mid, "queued", 0)
        first.status, first.attempts = "sent", 1
    async with sessions.begin() as session:
        second = await messages.claim_message(session, message_values(contact_id, wid, mid))
        # The existing row, untouched by the second claim.
        assert (second.message_id, second.status, second.attempts) == (mid, "sent", 1)
    async with sessions() as session:
        rows = list(await session.scalars(select(Message).where(Message.workflow_id == wid)))
    assert [(r.message_id, r.step, r.status) for r in rows] == [(mid, "cart_1", "sent")]


async def test_one_message_per_journey_step(sessions: Sessions) -> None:
    contact_id = await new_contact(sessions)
    wid = new_id("wf")
    async with sessions.begin() as session:
        await messages.claim_message(session, message_values(contact_id, wid, new_id("m")))

    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(Message(**message_values(contact_id, wid, new_id("other"))))

    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Message).where(Message.workflow_id == wid)
        )
    assert count == 1


# ---- types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount", [Decimal("49.00"), Decimal("1234567.89"), Decimal("0.10"), Decimal("9999999999.99")]
)
async def test_money_round_trips_exactly(sessions: Sessions, amount: Decimal) -> None:
    contact_id = await new_contact(sessions)
    order_id, token = new_id("o"), new_id("cart")
    async with sessions.begin() as session:
        session.add(
            Order(
                id=order_id,
                contact_id=contact_id,
                currency="EUR",
                total=amount,
                placed_at=datetime(2026, 11, 23, 11, tzinfo=UTC),
            )
        )
        session.add(Cart(token=token, contact_id=contact_id, currency="EUR"))
        session.add(
            CartLine(
                cart_token=token,
                position=0,
                product_id="p1",
                title="Linen shirt",
                price=amount,
                quantity=1,
            )
        )
    async with sessions() as session:
        order = await session.get(Order, order_id)
        price = await session.scalar(select(CartLine.price).where(CartLine.cart_token == token))
    assert order is not None
    for value in (order.total, price):
        assert isinstance(value, Decimal)
        assert value == amount
        assert str(value) == str(amount)


async def test_datetimes_come_back_aware_utc(sessions: Sessions) -> None:
    contact_id = await new_contact(sessions)
    order_id = new_id("o")
    lisbon_summer = timezone(timedelta(hours=1))
    placed = datetime(2026, 7, 1, 12, 30, 15, 123456, tzinfo=lisbon_summer)
    async with sessions.begin() as session:
        session.add(
            Order(id=order_id, contact_id=contact_id, currency="EUR", total=1, placed_at=placed)
        )
    async with sessions() as session:
        order = await session.get(Order, order_id)
        contact = await session.get(Contact, contact_id)
    assert order is not None and contact is not None
    assert order.placed_at == placed
    assert order.placed_at.tzinfo is not None
    assert order.placed_at.utcoffset() == timedelta(0)
    assert order.placed_at.replace(tzinfo=None) == datetime(2026, 7, 1, 11, 30, 15, 123456)
    assert contact.created_at.utcoffset() == timedelta(0)

    with pytest.raises(StatementError, match="naive datetime"):
        async with sessions.begin() as session:
            session.add(
                Order(
                    id=new_id("o"),
                    contact_id=contact_id,
                    currency="EUR",
                    total=1,
                    placed_at=datetime(2026, 7, 1, 12),
                )
            )


# ---- flow filters --------------------------------------------------------------------------


async def add_order(
    sessions: Sessions, contact_id: int, placed_at: datetime, cart_token: str | None
) -> None:
    async with sessions.begin() as session:
        session.add(
            Order(
                id=new_id("o"),
                contact_id=contact_id,
                cart_token=cart_token,
                currency="EUR",
                total=Decimal("49.00"),
                placed_at=placed_at,
            )
        )


async def test_has_converted(sessions: Sessions) -> None:
    since = datetime(2026, 11, 23, 10, tzinfo=UTC)
    ana, bea, carla = [await new_contact(sessions) for _ in range(3)]
    ana_cart, bea_cart, bea_old_cart = new_id("cart"), new_id("cart"), new_id("cart")

    async with sessions() as session:
        assert not await orders.has_converted(session, ana, ana_cart, since)

    # An order for this very cart counts whenever it was placed.
    await add_order(sessions, ana, since - timedelta(days=30), ana_cart)
    async with sessions() as session:
        assert await orders.has_converted(session, ana, ana_cart, since)

    # An earlier order of another cart does not; an order of someone else does not either.
    await add_order(sessions, bea, since - timedelta(seconds=1), bea_old_cart)
    await add_order(sessions, carla, since + timedelta(hours=1), None)
    async with sessions() as session:
        assert not await orders.has_converted(session, bea, bea_cart, since)
        assert not await orders.has_converted(session, bea, None, since)

    # Any order by the contact since the journey started does.
    await add_order(sessions, bea, since + timedelta(minutes=5), new_id("cart"))
    async with sessions() as session:
        assert await orders.has_converted(session, bea, bea_cart, since)
        assert await orders.has_converted(session, bea, None, since)
        assert not await orders.has_converted(session, bea, bea_cart, since + timedelta(minutes=6))
