"""Loyalty on SQLite and PostgreSQL: points per order with tier multipliers, tiers by lifetime
spend, a tier change reported once (and stored as a `loyalty_tier_changed` event to route),
refunds taking points back, and replays changing nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.commerce import loyalty
from nudge.contacts import directory
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.settings import Settings
from nudge.storage.models import Contact, LoyaltyEntry, Order
from support import new_email, new_id

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)


@pytest.fixture
def settings(db_url: str) -> Settings:
    # The defaults, spelled out: 1 point per unit; bronze 0 / silver 500 / gold 1500.
    return Settings(
        database_url=db_url,
        loyalty_points_per_unit=Decimal(1),
        loyalty_tiers={"bronze": Decimal(0), "silver": Decimal(500), "gold": Decimal(1500)},
        loyalty_multipliers={
            "bronze": Decimal(1),
            "silver": Decimal("1.25"),
            "gold": Decimal("1.5"),
        },
    )


class Shopper:
    def __init__(self, sessions: Sessions, settings: Settings, contact_id: int, email: str):
        self.sessions, self.settings = sessions, settings
        self.contact_id, self.email = contact_id, email
        self.hours = 0

    @classmethod
    async def new(cls, sessions: Sessions, settings: Settings) -> Shopper:
        email = new_email()
        async with sessions.begin() as session:
            contact_id = await directory.upsert_contact(session, ev.ContactIn(email=email))
        return cls(sessions, settings, contact_id, email)

    def order(self, total: str, order_id: str | None = None) -> ev.StoreEventIn:
        self.hours += 1
        return ev.event_adapter.validate_python(
            {
                "id": new_id("evt"),
                "type": "order_placed",
                "occurred_at": (T0 + timedelta(hours=self.hours)).isoformat(),
                "contact": {"email": self.email},
                "order": {"id": order_id or new_id("o"), "currency": "EUR", "total": total},
            }
        )

    def refund(self, order_id: str) -> ev.StoreEventIn:
        self.hours += 1
        return ev.event_adapter.validate_python(
            {
                "id": new_id("evt"),
                "type": "order_refunded",
                "occurred_at": (T0 + timedelta(hours=self.hours)).isoformat(),
                "contact": {"email": self.email},
                "order": {"id": order_id},
            }
        )

    async def apply(self, event: ev.StoreEventIn) -> list[ev.StoreEventIn]:
        """Apply the event; the internal events it caused, still to route."""
        async with self.sessions.begin() as session:
            await projection.apply_event(session, event, self.contact_id, settings=self.settings)
        async with self.sessions() as session:
            return await event_log.follow_ups(session, event.id)

    async def status(self) -> tuple[str | None, int]:
        async with self.sessions() as session:
            found = await loyalty.status(session, self.contact_id, self.settings)
        return found.tier, found.points

    async def ledger(self) -> list[tuple[int, str]]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(LoyaltyEntry)
                .where(LoyaltyEntry.contact_id == self.contact_id)
                .order_by(LoyaltyEntry.id)
            )
            return [(r.points, r.reason) for r in rows]


def tier_changes(follow_ups: list[ev.StoreEventIn]) -> list[tuple[str, str]]:
    return [
        (e.loyalty.old, e.loyalty.new) for e in follow_ups if isinstance(e, ev.LoyaltyTierChanged)
    ]


async def test_points_follow_the_tier_held_when_ordering(
    sessions: Sessions, settings: Settings
) -> None:
    ana = await Shopper.new(sessions, settings)
    assert await ana.status() == (None, 0)

    # A first order joins the lowest tier: no change worth an event.
    assert await ana.apply(ana.order("120.50")) == []
    assert await ana.status() == ("bronze", 120)
    # Bronze earns x1 (floor of 399.99); the order lifts lifetime spend to 520.49: silver.
    assert tier_changes(await ana.apply(ana.order("399.99"))) == [("bronze", "silver")]
    assert await ana.status() == ("silver", 120 + 399)
    # Silver earns x1.25: floor(33.33 x 1.25 = 41.6625).
    assert await ana.apply(ana.order("33.33")) == []
    # 1000 x 1.25 while silver; then gold.
    assert tier_changes(await ana.apply(ana.order("1000.00"))) == [("silver", "gold")]
    # Gold earns x1.5.
    await ana.apply(ana.order("10.00"))
    assert await ana.ledger() == [
        (120, "order"),
        (399, "order"),
        (41, "order"),
        (1250, "order"),
        (15, "order"),
    ]
    assert await ana.status() == ("gold", 120 + 399 + 41 + 1250 + 15)
    async with sessions() as session:
        contact = await session.get(Contact, ana.contact_id)
    assert contact is not None
    assert (contact.loyalty_tier, contact.loyalty_tier_since) == ("gold", T0 + timedelta(hours=4))


async def test_a_big_first_order_skips_straight_to_a_higher_tier(
    sessions: Sessions, settings: Settings
) -> None:
    bea = await Shopper.new(sessions, settings)
    assert tier_changes(await bea.apply(bea.order("1500.00"))) == [("bronze", "gold")]
    # Earned at the tier held when ordering: none yet, so the lowest.
    assert await bea.status() == ("gold", 1500)


async def test_a_tier_change_is_reported_once_and_replays_earn_nothing(
    sessions: Sessions, settings: Settings
) -> None:
    carla = await Shopper.new(sessions, settings)
    order_id = new_id("o")
    event = carla.order("600.00", order_id)
    [change] = await carla.apply(event)
    assert isinstance(change, ev.LoyaltyTierChanged)
    assert (change.id, change.type, change.contact.email) == (
        f"{event.id}:loyalty_tier_changed",
        "loyalty_tier_changed",
        carla.email,
    )
    assert (change.occurred_at, change.loyalty.old, change.loyalty.new) == (
        event.occurred_at,
        "bronze",
        "silver",
    )
    # The same event again, and the same order under a new event id: nothing more.
    await carla.apply(event)
    assert await carla.apply(carla.order("600.00", order_id)) == []
    async with sessions.begin() as session:
        again = await loyalty.on_order(
            session,
            settings,
            contact_id=carla.contact_id,
            order_id=order_id,
            total=Decimal("600.00"),
            at=T0,
        )
    assert again is None
    assert await carla.ledger() == [(600, "order")]

    # Once routed, it is no longer handed out.
    async with sessions.begin() as session:
        await event_log.mark_routed(session, change.id)
    async with sessions() as session:
        assert await event_log.follow_ups(session, event.id) == []


async def test_on_order_returns_the_tier_change(sessions: Sessions, settings: Settings) -> None:
    dora = await Shopper.new(sessions, settings)
    order_id = new_id("o")
    async with sessions.begin() as session:
        session.add(
            Order(
                id=order_id,
                contact_id=dora.contact_id,
                currency="EUR",
                total=Decimal("700.00"),
                placed_at=T0,
            )
        )
        await session.flush()
        change = await loyalty.on_order(
            session,
            settings,
            contact_id=dora.contact_id,
            order_id=order_id,
            total=Decimal("700.00"),
            at=T0,
        )
    assert change == loyalty.TierChange(dora.contact_id, "bronze", "silver", T0)
    async with sessions() as session:
        found = await loyalty.status(session, dora.contact_id, settings)
    assert (found.tier, found.points, found.lifetime_spend) == ("silver", 700, Decimal(700))
    assert (found.next_tier, found.spend_to_next_tier) == ("gold", Decimal(800))


async def test_a_refund_takes_the_points_back_once_and_can_lower_the_tier(
    sessions: Sessions, settings: Settings
) -> None:
    eva = await Shopper.new(sessions, settings)
    small, big = new_id("o"), new_id("o")
    await eva.apply(eva.order("100.00", small))
    assert tier_changes(await eva.apply(eva.order("450.00", big))) == [("bronze", "silver")]

    refund = eva.refund(big)
    assert tier_changes(await eva.apply(refund)) == [("silver", "bronze")]
    assert await eva.status() == ("bronze", 100)
    await eva.apply(refund)
    assert await eva.apply(eva.refund(big)) == []
    assert await eva.ledger() == [(100, "order"), (450, "order"), (-450, "refund")]

    # Refunds of orders never seen, or of someone else's, do nothing.
    other = await Shopper.new(sessions, settings)
    assert await other.apply(other.refund(small)) == []
    assert await other.apply(other.refund(new_id("o"))) == []
    assert await other.ledger() == []
    assert await eva.status() == ("bronze", 100)


def test_loyalty_settings_are_json_in_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NUDGE_LOYALTY_TIERS", '{"gold": "1000", "member": 0}')
    monkeypatch.setenv("NUDGE_LOYALTY_MULTIPLIERS", '{"member": 1, "gold": "2.5"}')
    monkeypatch.setenv("NUDGE_LOYALTY_POINTS_PER_UNIT", "0.5")
    settings = Settings()
    assert list(settings.loyalty_tiers) == ["member", "gold"]  # ordered by threshold
    assert loyalty.points_for(Decimal("99.99"), "gold", settings) == 124  # floor(124.9875)
    assert loyalty.tier_for(Decimal("999.99"), settings) == "member"
    assert loyalty.tier_for(Decimal("1000"), settings) == "gold"

    monkeypatch.setenv("NUDGE_LOYALTY_MULTIPLIERS", '{"member": 1}')
    with pytest.raises(ValidationError, match="exactly the tiers"):
        Settings()
    monkeypatch.setenv("NUDGE_LOYALTY_MULTIPLIERS", '{"member": 1, "gold": 0}')
    with pytest.raises(ValidationError, match="greater than 0"):
        Settings()
    monkeypatch.setenv("NUDGE_LOYALTY_TIERS", '{"gold": 1000}')
    with pytest.raises(ValidationError, match="a tier from 0"):
        Settings()
    monkeypatch.setenv("NUDGE_LOYALTY_TIERS", '{"a": 0, "b": 0}')
    with pytest.raises(ValidationError, match="distinct"):
        Settings()
