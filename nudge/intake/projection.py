"""The projection: what a stored event changes in contacts, products, carts, orders, consent,
coupons and loyalty. Idempotent: a replayed event changes nothing more."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.commerce import loyalty, orders
from nudge.contacts import consent
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.settings import Settings, get_settings
from nudge.storage.models import Order


async def apply_event(
    session: AsyncSession,
    event: ev.StoreEventIn,
    contact_id: int,
    *,
    settings: Settings | None = None,
) -> bool:
    """Fold an event into contacts, products, carts and orders (idempotent). Returns False for
    an event older than what is stored (a stale cart snapshot), which must not reach journeys.

    An event can cause internal events (a loyalty tier change): they are stored in the same
    transaction, unrouted, and `event_log.follow_ups(session, event.id)` returns them for routing."""
    settings = settings or get_settings()
    change: loyalty.TierChange | None = None
    match event:
        case ev.CartUpdated(cart=cart) | ev.CheckoutStarted(cart=cart):
            return await orders.upsert_cart(session, cart, contact_id, event.occurred_at)
        case ev.OrderPlaced(order=order):
            change = await orders.insert_order(
                session, order, contact_id, event.occurred_at, settings
            )
        case ev.OrderShipped():
            await _order_shipped(session, event, contact_id)
        case ev.OrderRefunded():
            change = await _order_refunded(session, settings, event, contact_id)
        case ev.ProductViewed():
            await _product_viewed(session, event)
        case ev.BackInStockRequested():
            await _back_in_stock_requested(session, event)
        case ev.CustomerSubscribed():
            await consent.on_subscribed(session, settings, event, contact_id)
        case ev.CustomerUnsubscribed():
            await consent.on_unsubscribed(session, event, contact_id)
    if change is not None:
        await _record_tier_change(session, event, change, contact_id)
    return True


async def _order_shipped(session: AsyncSession, event: ev.OrderShipped, contact_id: int) -> None:
    await session.execute(
        update(Order)
        .where(Order.id == event.order.id, Order.contact_id == contact_id)
        .values(
            status="shipped",
            shipped_at=event.occurred_at,
            tracking_url=event.order.tracking_url,
        )
    )


async def _order_refunded(
    session: AsyncSession, settings: Settings, event: ev.OrderRefunded, contact_id: int
) -> loyalty.TierChange | None:
    refund = event.order
    await session.execute(
        update(Order)
        .where(Order.id == refund.id, Order.contact_id == contact_id)
        .values(status="refunded")
    )
    return await loyalty.on_refund(
        session, settings, contact_id=contact_id, order_id=refund.id, at=event.occurred_at
    )


async def _product_viewed(session: AsyncSession, event: ev.ProductViewed) -> None:
    # A view that does not say whether the product is in stock leaves that as it was.
    product = event.product
    await orders.upsert_products(
        session,
        [product.model_dump()],
        with_stock="in_stock" in product.model_fields_set,
    )


async def _back_in_stock_requested(session: AsyncSession, event: ev.BackInStockRequested) -> None:
    # Asked for because it is out of stock: so it is, unless the event says otherwise.
    product = event.product
    stock = product.in_stock if "in_stock" in product.model_fields_set else False
    await orders.upsert_products(
        session, [product.model_dump() | {"in_stock": stock}], with_stock=True
    )


async def _record_tier_change(
    session: AsyncSession, event: ev.StoreEventIn, change: loyalty.TierChange, contact_id: int
) -> None:
    """Store the `loyalty_tier_changed` event the store event caused, unrouted (a follow-up)."""
    await event_log.record_follow_up(
        session,
        ev.LoyaltyTierChanged(
            id=event_log.follow_up_id(event.id, "loyalty_tier_changed"),
            type="loyalty_tier_changed",
            occurred_at=change.at,
            contact=ev.ContactIn(email=event.contact.email),
            loyalty=ev.TierChangeIn(old=change.old, new=change.new),
        ),
        contact_id,
    )
