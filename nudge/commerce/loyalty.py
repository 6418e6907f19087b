"""Loyalty: points per order, tiers by lifetime spend.

An order earns floor(total x NUDGE_LOYALTY_POINTS_PER_UNIT x the multiplier of the tier the
contact held when ordering) points: one ledger row per order, so a replayed event earns nothing
more. A refund writes one negative row that takes the order's points back. The balance is the sum
of the ledger. After each order or refund the tier is recomputed from the lifetime spend (the
totals of the contact's orders that are not refunded): the highest tier whose threshold it
reaches. A contact without a tier is in the lowest one. A change of tier is stored on the
contact and returned as a `TierChange`, which the caller turns into a `loyalty_tier_changed`
event for flows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.settings import Settings
from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import Contact, LoyaltyEntry, Order

EARNED = "order"
REVERSED = "refund"


@dataclass(frozen=True, slots=True)
class TierChange:
    contact_id: int
    old: str
    new: str
    at: datetime


@dataclass(frozen=True, slots=True)
class LoyaltyStatus:
    tier: str | None
    points: int
    lifetime_spend: Decimal
    next_tier: str | None
    spend_to_next_tier: Decimal | None


def base_tier(settings: Settings) -> str:
    return next(iter(settings.loyalty_tiers))  # sorted by threshold: the one from 0


def tier_for(spend: Decimal, settings: Settings) -> str:
    reached = [name for name, threshold in settings.loyalty_tiers.items() if spend >= threshold]
    return reached[-1] if reached else base_tier(settings)


def points_for(total: Decimal, tier: str | None, settings: Settings) -> int:
    multiplier = settings.loyalty_multipliers.get(tier or base_tier(settings), Decimal(1))
    return math.floor(total * settings.loyalty_points_per_unit * multiplier)


async def on_order(
    session: AsyncSession,
    settings: Settings,
    *,
    contact_id: int,
    order_id: str,
    total: Decimal,
    at: datetime,
) -> TierChange | None:
    """Earn the order's points (once) and recompute the tier."""
    contact = await _locked_contact(session, contact_id)
    if contact is None:
        return None
    entry = (
        insert_for(session, LoyaltyEntry)
        .values(
            contact_id=contact_id,
            order_id=order_id,
            points=points_for(total, contact.loyalty_tier, settings),
            reason=EARNED,
            at=at,
        )
        .on_conflict_do_nothing(index_elements=["order_id", "reason"])
    )
    if not rowcount(await session.execute(entry)):
        return None  # a replay: earned before
    return await _retier(session, settings, contact, at)


async def on_refund(
    session: AsyncSession, settings: Settings, *, contact_id: int, order_id: str, at: datetime
) -> TierChange | None:
    """Take back what the order earned (once) and recompute the tier."""
    earned = await session.scalar(
        select(LoyaltyEntry.points).where(
            LoyaltyEntry.order_id == order_id,
            LoyaltyEntry.reason == EARNED,
            LoyaltyEntry.contact_id == contact_id,
        )
    )
    if earned is None:
        return None  # an order we never saw, or someone else's
    contact = await _locked_contact(session, contact_id)
    if contact is None:
        return None
    reversal = (
        insert_for(session, LoyaltyEntry)
        .values(contact_id=contact_id, order_id=order_id, points=-earned, reason=REVERSED, at=at)
        .on_conflict_do_nothing(index_elements=["order_id", "reason"])
    )
    if not rowcount(await session.execute(reversal)):
        return None
    return await _retier(session, settings, contact, at)


async def _locked_contact(session: AsyncSession, contact_id: int) -> Contact | None:
    # One order at a time per contact (PostgreSQL; SQLite serialises writers anyway), so two
    # concurrent orders cannot both see the old tier and report the same change twice.
    return await session.scalar(
        select(Contact)
        .where(Contact.id == contact_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def lifetime_spend(session: AsyncSession, contact_id: int) -> Decimal:
    spend = await session.scalar(
        select(func.coalesce(func.sum(Order.total), 0)).where(
            Order.contact_id == contact_id, Order.status != "refunded"
        )
    )
    return Decimal(spend or 0)


async def balance(session: AsyncSession, contact_id: int) -> int:
    points = await session.scalar(
        select(func.coalesce(func.sum(LoyaltyEntry.points), 0)).where(
            LoyaltyEntry.contact_id == contact_id
        )
    )
    return int(points or 0)


async def _retier(
    session: AsyncSession, settings: Settings, contact: Contact, at: datetime
) -> TierChange | None:
    new = tier_for(await lifetime_spend(session, contact.id), settings)
    old = contact.loyalty_tier
    if new == old:
        return None
    await session.execute(
        update(Contact)
        .where(Contact.id == contact.id)
        .values(loyalty_tier=new, loyalty_tier_since=at)
    )
    old = old or base_tier(settings)
    # Joining the lowest tier with a first order is no change to announce.
    return None if new == old else TierChange(contact.id, old, new, at)


async def status(session: AsyncSession, contact_id: int, settings: Settings) -> LoyaltyStatus:
    """Tier, points and what is left to spend to the next tier, for templates."""
    tier = await session.scalar(select(Contact.loyalty_tier).where(Contact.id == contact_id))
    spend = await lifetime_spend(session, contact_id)
    above = [(n, t) for n, t in settings.loyalty_tiers.items() if t > spend]
    next_tier, threshold = above[0] if above else (None, None)
    return LoyaltyStatus(
        tier=tier,
        points=await balance(session, contact_id),
        lifetime_spend=spend,
        next_tier=next_tier,
        spend_to_next_tier=None if threshold is None else threshold - spend,
    )
