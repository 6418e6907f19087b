"""Unique coupons on SQLite and PostgreSQL: the codes, issuing once per source, and redemption
through `order_placed` events (expiry, single use, another contact's code, replays)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.commerce import coupons
from nudge.contacts import directory
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.mail import context
from nudge.settings import Settings
from nudge.storage.models import Coupon, CouponAttempt, Order
from support import new_email, new_id

Sessions = async_sessionmaker[AsyncSession]
CODE = re.compile(r"^NUDGE-[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}$")
ISSUED = datetime(2026, 11, 23, 10, tzinfo=UTC)
EXPIRES = ISSUED + timedelta(hours=24)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url)


async def new_contact(sessions: Sessions) -> tuple[int, str]:
    email = new_email()
    async with sessions.begin() as session:
        return await directory.upsert_contact(session, ev.ContactIn(email=email)), email


async def issue(
    sessions: Sessions, contact_id: int, source: str | None = None, **kw: Any
) -> Coupon:
    values: dict[str, Any] = {
        "source": source or new_id("src"),
        "kind": "percent",
        "value": Decimal(10),
        "currency": None,
        "expires_at": EXPIRES,
        "prefix": "NUDGE",
    }
    async with sessions.begin() as session:
        return await coupons.issue(session, contact_id, **(values | kw))


def order_placed(
    email: str,
    code: str | None,
    *,
    at: datetime = ISSUED + timedelta(hours=1),
    order_id: str | None = None,
    event_id: str | None = None,
    currency: str = "EUR",
) -> ev.StoreEventIn:
    return ev.event_adapter.validate_python(
        {
            "id": event_id or new_id("evt"),
            "type": "order_placed",
            "occurred_at": at.isoformat(),
            "contact": {"email": email},
            "order": {
                "id": order_id or new_id("o"),
                "currency": currency,
                "total": "90.00",
                "discount_code": code,
                "lines": [
                    {"product_id": "p1", "title": "Linen shirt", "price": "40.00", "quantity": 2},
                    {"product_id": "p2", "title": "Socks", "price": "20.00", "quantity": 1},
                ],
            },
        }
    )


async def apply(
    sessions: Sessions, event: ev.StoreEventIn, contact_id: int, settings: Settings
) -> None:
    async with sessions.begin() as session:
        await projection.apply_event(session, event, contact_id, settings=settings)


async def outcome(
    sessions: Sessions, event: ev.StoreEventIn
) -> tuple[Decimal | None, str | None, str | None]:
    """(orders.discount_total, attempt outcome, attempt reason) of an order event."""
    assert isinstance(event, ev.OrderPlaced)
    async with sessions() as session:
        order = await session.get(Order, event.order.id)
        attempt = await session.scalar(
            select(CouponAttempt).where(CouponAttempt.order_id == event.order.id)
        )
    assert order is not None
    if attempt is None:
        return order.discount_total, None, None
    return order.discount_total, attempt.outcome, attempt.reason


async def coupon(sessions: Sessions, code: str) -> Coupon:
    async with sessions() as session:
        found = await session.get(Coupon, code)
    assert found is not None
    return found


# ---- codes ---------------------------------------------------------------------------------


def test_codes_are_the_prefix_and_8_unambiguous_characters() -> None:
    codes = [coupons.new_code("NUDGE") for _ in range(3000)]
    assert all(CODE.match(code) for code in codes)
    assert len(set(codes)) == len(codes)
    drawn = {char for code in codes for char in code.removeprefix("NUDGE-")}
    # Every character of the alphabet comes up (24,000 draws of 31), and no look-alike ever.
    assert drawn == set(coupons.ALPHABET)
    assert not drawn & set("0O1IL")
    assert coupons.new_code("VIP").startswith("VIP-")


async def test_issued_codes_are_unique_and_one_per_contact_and_source(
    sessions: Sessions,
) -> None:
    contacts = [(await new_contact(sessions))[0] for _ in range(5)]
    issued = [await issue(sessions, c, f"journey-{i}") for c in contacts for i in range(40)]
    codes = [c.code for c in issued]
    assert len(set(codes)) == len(codes) == 200
    assert all(CODE.match(code) for code in codes)

    # The same source again is the same coupon, not a second one.
    again = await issue(sessions, contacts[0], "journey-0", value=Decimal(50))
    assert (again.code, again.value, again.expires_at) == (codes[0], Decimal(10), EXPIRES)
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Coupon).where(Coupon.contact_id == contacts[0])
        )
    assert count == 40
    # The same source for another contact is another code.
    assert (await issue(sessions, contacts[1], "journey-0")).code == codes[40]


async def test_a_colliding_code_is_drawn_again(sessions: Sessions) -> None:
    contact_id, _ = await new_contact(sessions)
    taken = (await issue(sessions, contact_id)).code
    fresh = coupons.new_code("NUDGE")
    draws = iter([taken, taken, fresh])
    coupon = await issue(sessions, contact_id, draw=lambda prefix: next(draws))
    assert coupon.code == fresh
    with pytest.raises(coupons.CouponCollision):
        await issue(sessions, contact_id, draw=lambda prefix: taken)


async def test_invalid_coupons_are_refused(sessions: Sessions) -> None:
    contact_id, _ = await new_contact(sessions)
    with pytest.raises(ValueError, match="percent"):
        await issue(sessions, contact_id, value=Decimal(120))
    with pytest.raises(ValueError, match="amount"):
        await issue(sessions, contact_id, kind="amount", value=Decimal(5), currency=None)


def test_discount_is_personalised_by_segment() -> None:
    settings = Settings(
        coupon_percent=10, coupon_vip_percent=20, coupon_segment_percents={"lapsed_90": 15}
    )
    assert coupons.discount_for(set(), settings) == ("percent", Decimal(10))
    assert coupons.discount_for({"one_time_buyers"}, settings) == ("percent", Decimal(10))
    assert coupons.discount_for({"lapsed_90"}, settings) == ("percent", Decimal(15))
    assert coupons.discount_for({"vip", "lapsed_90"}, settings) == ("percent", Decimal(20))


async def test_a_step_sets_its_own_percent_over_the_segments(
    sessions: Sessions, settings: Settings
) -> None:
    """`send(..., offer_percent=15)`: a win-back ladder grows its incentive, VIP or not."""
    contact_id, _ = await new_contact(sessions)
    async with sessions.begin() as session:
        offer = await context.offer(
            session,
            contact_id,
            source="winback-1:evt:winback_2",
            segments=frozenset({"vip"}),
            settings=settings,
            now=ISSUED,
            percent=15,
        )
        assert (offer["kind"], offer["percent"]) == ("percent", 15)
        with pytest.raises(ValueError, match="offer_percent"):
            await context.offer(
                session,
                contact_id,
                source="winback-1:evt:winback_3",
                segments=frozenset(),
                settings=settings,
                now=ISSUED,
                percent=0,
            )


# ---- redemption ----------------------------------------------------------------------------


async def test_a_code_is_redeemed_once_and_a_second_use_is_flagged(
    sessions: Sessions, settings: Settings
) -> None:
    contact_id, email = await new_contact(sessions)
    code = (await issue(sessions, contact_id)).code

    first = order_placed(email, code.lower())  # as typed by the customer
    await apply(sessions, first, contact_id, settings)
    # 10% of the lines' 100.00.
    assert await outcome(sessions, first) == (Decimal("10.00"), "redeemed", None)
    redeemed = await coupon(sessions, code)
    assert isinstance(first, ev.OrderPlaced)
    assert (redeemed.redeemed_order_id, redeemed.redeemed_at) == (first.order.id, first.occurred_at)

    second = order_placed(email, code, at=ISSUED + timedelta(hours=2))
    await apply(sessions, second, contact_id, settings)
    assert await outcome(sessions, second) == (Decimal(0), "refused", "already_used")
    assert (await coupon(sessions, code)).redeemed_order_id == first.order.id
    async with sessions() as session:
        attempts = await coupons.attempts_of(session, code)
    assert [(a.outcome, a.reason) for a in attempts] == [
        ("redeemed", None),
        ("refused", "already_used"),
    ]


async def test_an_expired_code_is_refused_and_stays_usable_for_nothing(
    sessions: Sessions, settings: Settings
) -> None:
    contact_id, email = await new_contact(sessions)
    code = (await issue(sessions, contact_id)).code
    late = order_placed(email, code, at=EXPIRES)
    await apply(sessions, late, contact_id, settings)
    assert await outcome(sessions, late) == (Decimal(0), "refused", "expired")
    assert (await coupon(sessions, code)).redeemed_at is None

    # A second earlier than the expiry it still works (orders can arrive out of order).
    in_time = order_placed(email, code, at=EXPIRES - timedelta(seconds=1))
    await apply(sessions, in_time, contact_id, settings)
    assert await outcome(sessions, in_time) == (Decimal("10.00"), "redeemed", None)


async def test_another_contacts_code_and_an_unknown_code_are_refused(
    sessions: Sessions, settings: Settings
) -> None:
    owner, owner_email = await new_contact(sessions)
    other, other_email = await new_contact(sessions)
    code = (await issue(sessions, owner)).code

    stolen = order_placed(other_email, code)
    await apply(sessions, stolen, other, settings)
    assert await outcome(sessions, stolen) == (Decimal(0), "refused", "other_contact")
    made_up = order_placed(other_email, coupons.new_code("NUDGE"))
    await apply(sessions, made_up, other, settings)
    assert await outcome(sessions, made_up) == (Decimal(0), "refused", "unknown")
    # A store's own code is not Nudge's to judge: no attempt recorded, nothing flagged.
    theirs = order_placed(other_email, "SUMMER10")
    await apply(sessions, theirs, other, settings)
    assert await outcome(sessions, theirs) == (None, None, None)

    # The owner can still use it.
    own = order_placed(owner_email, code)
    await apply(sessions, own, owner, settings)
    assert await outcome(sessions, own) == (Decimal("10.00"), "redeemed", None)


async def test_replayed_order_events_change_nothing(sessions: Sessions, settings: Settings) -> None:
    contact_id, email = await new_contact(sessions)
    code = (await issue(sessions, contact_id)).code
    order_id, event_id = new_id("o"), new_id("evt")
    event = order_placed(email, code, order_id=order_id, event_id=event_id)
    for _ in range(3):
        await apply(sessions, event, contact_id, settings)
    # The same order again under another event id (a store retrying with a fresh id).
    await apply(sessions, order_placed(email, code, order_id=order_id), contact_id, settings)
    # And the redemption itself run again for the same order.
    async with sessions.begin() as session:
        attempt = await coupons.redeem(
            session,
            code=code,
            order_id=order_id,
            contact_id=contact_id,
            subtotal=Decimal(100),
            currency="EUR",
            placed_at=ISSUED + timedelta(hours=1),
        )
    assert (attempt.outcome, attempt.reason) == ("redeemed", None)
    assert await outcome(sessions, event) == (Decimal("10.00"), "redeemed", None)
    async with sessions() as session:
        attempts = await coupons.attempts_of(session, code)
    assert [(a.order_id, a.outcome) for a in attempts] == [(order_id, "redeemed")]


async def test_an_amount_coupon_takes_at_most_the_order_in_its_currency(
    sessions: Sessions, settings: Settings
) -> None:
    contact_id, email = await new_contact(sessions)
    five = await issue(sessions, contact_id, kind="amount", value=Decimal(5), currency="EUR")
    big = await issue(sessions, contact_id, kind="amount", value=Decimal(500), currency="EUR")
    dollars = await issue(sessions, contact_id, kind="amount", value=Decimal(5), currency="USD")

    events = [order_placed(email, c.code) for c in (five, big, dollars)]
    for event in events:
        await apply(sessions, event, contact_id, settings)
    assert [await outcome(sessions, e) for e in events] == [
        (Decimal("5.00"), "redeemed", None),
        (Decimal("100.00"), "redeemed", None),
        (Decimal(0), "refused", "currency"),
    ]


async def test_an_order_without_a_code_has_no_discount_recorded(
    sessions: Sessions, settings: Settings
) -> None:
    contact_id, email = await new_contact(sessions)
    event = order_placed(email, None)
    await apply(sessions, event, contact_id, settings)
    assert await outcome(sessions, event) == (None, None, None)
