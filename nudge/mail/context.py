"""An email's template context: everything a template may use (README "Personal content").

`email_context` builds it for every email Nudge renders: a journey's (the send activity,
activities/email.py, and the report's preview, nudge/analytics/reports.py) and the double opt-in
confirmation (nudge/mail/confirmation.py). Each part is plain data (dicts, lists, sets), so
templates never reach the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.commerce import catalog, coupons, loyalty, orders, recommend
from nudge.settings import Settings
from nudge.storage.models import Cart, Contact, Order, Product, SegmentMember

FIRST_NAME_FALLBACK = "there"
# An email outside journeys (the confirmation) shows no loyalty line: `loyalty.tier` is None.
NO_LOYALTY = {"tier": None, "points": 0}


@dataclass(frozen=True, slots=True)
class JourneyEmail:
    """What a journey's email is about, for the parts of its context that cost queries."""

    # The variables its template reads (Renderer.variables): only those parts are built.
    uses: frozenset[str]
    # The journey's key: a cart token, a product id (product flows) or an order id.
    key: str
    trigger_event_id: str
    # One coupon per source: a retried send shows the code it first showed.
    offer_source: str
    offer_percent: int | None = None


async def email_context(
    session: AsyncSession,
    settings: Settings,
    contact: Contact,
    message_id: str,
    *,
    journey: JourneyEmail | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """The context of one email to `contact`: the contact, the store, the message and its
    unsubscribe link; for a journey's email also the contact's segments and loyalty, and the
    parts its template uses (see `journey_parts`). Nothing else reads the database."""
    now = datetime.now(UTC)
    context: dict[str, Any] = {
        "contact": contact_context(contact),
        "store": store_context(settings),
        "loyalty": dict(NO_LOYALTY),
        "message_id": message_id,
        "now": now,
        "unsubscribe_url": unsubscribe_url,
    }
    if journey is not None:
        segments = await segment_ids(session, contact.id)
        context["segments"] = segments
        context["is_vip"] = "vip" in segments
        context["loyalty"] = await loyalty_context(session, contact.id, settings)
        context |= await journey_parts(session, settings, contact, journey, segments, now)
    return context


async def journey_parts(
    session: AsyncSession,
    settings: Settings,
    contact: Contact,
    journey: JourneyEmail,
    segments: frozenset[str],
    now: datetime,
) -> dict[str, Any]:
    """The cart the journey is about (if its key is one), and the product, order,
    recommendations, last order and offer when the template uses them."""
    uses = journey.uses
    parts: dict[str, Any] = {}
    cart = await orders.get_cart(session, journey.key)
    seeds = [] if cart is None else [line.product_id for line in cart.lines]
    if cart is not None:
        parts["cart"] = cart_context(settings, cart)
    if cart is None and "product" in uses:
        # A product flow (browse abandonment, back in stock, price drop): keyed by product id.
        parts["product"] = await product(session, journey.key, journey.trigger_event_id)
        # Its recommendations are products like it, never itself.
        seeds = [parts["product"]["id"]] if parts["product"] else []
    if "order" in uses:
        parts["order"] = await order(session, contact.id, journey.key)
        if not seeds:
            # After an order (post-purchase cross-sell), what goes with what was bought.
            seeds = [line["product_id"] for line in (parts["order"] or {}).get("lines", [])]
    if uses & {"recommendations", "alternatives"}:
        found = await recommendations(session, contact.id, seeds, now)
        # `alternatives` is the older name, kept for templates that use it.
        parts["recommendations"] = parts["alternatives"] = found
    if "last_order" in uses:
        parts["last_order"] = await last_order(session, contact.id)
    if "offer" in uses:
        parts["offer"] = await offer(
            session,
            contact.id,
            source=journey.offer_source,
            segments=segments,
            settings=settings,
            now=now,
            percent=journey.offer_percent,
        )
    return parts


def store_context(settings: Settings) -> dict[str, Any]:
    return {
        "name": settings.store_name,
        "address": settings.store_address,
        "url": settings.public_url,
        "logo_url": settings.store_logo_url,
    }


def cart_context(settings: Settings, cart: Cart) -> dict[str, Any]:
    return {
        "token": cart.token,
        "currency": cart.currency,
        "checkout_url": cart.checkout_url or settings.public_url,
        "lines": [
            {
                "product_id": line.product_id,
                "title": line.title,
                "price": line.price,
                "quantity": line.quantity,
                "image_url": line.image_url,
                "url": line.url,
            }
            for line in cart.lines
        ],
        "total": sum((line.price * line.quantity for line in cart.lines), start=0),
    }


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
