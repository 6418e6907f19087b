"""The personal parts of an email's template context, read from the database.

`activities/email.py` (`EmailActivities._context`) puts them together; each part is plain data
(dicts, lists, sets), so templates never reach the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.commerce import catalog, coupons, loyalty, recommend
from nudge.settings import Settings
from nudge.storage.models import Contact, Order, Product, SegmentMember

FIRST_NAME_FALLBACK = "there"


def contact_context(contact: Contact) -> dict[str, Any]:
    return {
        "first_name": contact.first_name or FIRST_NAME_FALLBACK,
        "last_name": contact.last_name,
        "email": contact.email,
        "timezone": contact.timezone,
        "locale": contact.locale,
        "properties": dict(contact.properties or {}),
    }


async def segment_ids(session: AsyncSession, contact_id: int) -> frozenset[str]:
    rows = await session.scalars(
        select(SegmentMember.segment_id).where(SegmentMember.contact_id == contact_id)
    )
    return frozenset(rows)


async def loyalty_context(
    session: AsyncSession, contact_id: int, settings: Settings
) -> dict[str, Any]:
    status = await loyalty.status(session, contact_id, settings)
    return {
        "tier": status.tier,
        "points": status.points,
        "lifetime_spend": status.lifetime_spend,
        "next_tier": status.next_tier,
        "spend_to_next_tier": status.spend_to_next_tier,
    }


async def last_order(session: AsyncSession, contact_id: int) -> dict[str, Any] | None:
    order = await session.scalar(
        select(Order)
        .where(Order.contact_id == contact_id)
        .order_by(Order.placed_at.desc(), Order.id.desc())
        .limit(1)
    )
    return None if order is None else await _order_context(session, order)


async def order(session: AsyncSession, contact_id: int, order_id: str) -> dict[str, Any] | None:
    """The contact's order `order_id` (a post-purchase journey's key), or None if it is not
    theirs, with its shipment (the carrier is not stored)."""
    found = await session.get(Order, order_id)
    if found is None or found.contact_id != contact_id:
        return None
    return await _order_context(session, found) | {
        "shipped_at": found.shipped_at,
        "tracking_url": found.tracking_url,
    }


async def _order_context(session: AsyncSession, order: Order) -> dict[str, Any]:
    ids = [line.product_id for line in order.lines]
    products = {p.id: p for p in await session.scalars(select(Product).where(Product.id.in_(ids)))}
    return {
        "id": order.id,
        "currency": order.currency,
        "total": order.total,
        "placed_at": order.placed_at,
        "status": order.status,
        "lines": [
            {
                "product_id": line.product_id,
                "title": line.title,
                "price": line.price,
                "quantity": line.quantity,
                "image_url": products[line.product_id].image_url
                if line.product_id in products
                else None,
                "url": products[line.product_id].url if line.product_id in products else None,
            }
            for line in order.lines
        ],
    }


async def product(
    session: AsyncSession, product_id: str, trigger_event_id: str
) -> dict[str, Any] | None:
    """The product a journey is about, as the catalogue has it now; `old_price` is what it cost
    before, when the journey began with a `price_dropped` event (else None)."""
    found = await session.get(Product, product_id)
    if found is None:
        return None
    change = await catalog.price_change(session, trigger_event_id)
    return {
        "id": found.id,
        "title": found.title,
        "url": found.url,
        "image_url": found.image_url,
        "price": found.price,
        "currency": found.currency,
        "in_stock": found.in_stock,
        "category": found.category,
        "old_price": change.old if change else None,
    }


async def recommendations(
    session: AsyncSession,
    contact_id: int,
    cart_product_ids: Sequence[str],
    now: datetime,
    limit: int = 3,
) -> list[dict[str, Any]]:
    found = await recommend.recommend(session, contact_id, cart_product_ids, now, limit)
    return [
        {
            "product_id": r.product.id,
            "title": r.product.title,
            "url": r.product.url,
            "image_url": r.product.image_url,
            "price": r.product.price,
            "currency": r.product.currency,
            "category": r.product.category,
            "strategy": r.strategy,
        }
        for r in found
    ]


async def offer(
    session: AsyncSession,
    contact_id: int,
    *,
    source: str,
    segments: frozenset[str],
    settings: Settings,
    now: datetime,
    percent: int | None = None,
) -> dict[str, Any]:
    """The contact's unique coupon for `source` (the same one on every retry of the step),
    worth `percent` if the step sets its own incentive, or else what their segments get."""
    kind, value = coupons.discount_for(segments, settings)
    if percent is not None:
        if not 1 <= percent <= 100:
            raise ValueError(f"offer_percent must be between 1 and 100, got {percent}")
        kind, value = coupons.CouponKind.PERCENT, Decimal(percent)
    coupon = await coupons.issue(
        session,
        contact_id,
        source=source,
        kind=kind,
        value=value,
        currency=None,
        expires_at=now + timedelta(hours=settings.coupon_valid_hours),
        prefix=settings.coupon_prefix,
    )
    value = coupon.value
    whole = value == value.to_integral_value()
    return {
        "code": coupon.code,
        "kind": coupon.kind,
        "percent": int(value) if whole else value,
        "value": value,
        "expires_at": coupon.expires_at,
    }
