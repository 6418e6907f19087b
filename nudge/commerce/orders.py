"""Products, carts and orders as events teach them, out of order and replayed: an older cart
snapshot never replaces a newer one, an order is stored once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    and_,
    delete,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.commerce import coupons, loyalty
from nudge.events import schemas as ev
from nudge.settings import Settings
from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import (
    Cart,
    CartLine,
    Order,
    OrderLine,
    Product,
    utcnow,
)


async def upsert_products(
    session: AsyncSession, products: Sequence[dict[str, Any]], *, with_stock: bool = False
) -> None:
    """Learn the catalogue from events. A field an event leaves out (a cart line has no stock
    level, often no picture) keeps what an earlier event told us."""
    columns = ["title", "url", "image_url", "price", "currency", "category"] + (
        ["in_stock"] if with_stock else []
    )
    # One row per product (the last line wins): PostgreSQL refuses to upsert a row twice.
    by_id = {p["id"]: p for p in products}
    rows = [
        {"id": p["id"], **{c: p.get(c) for c in columns}, "updated_at": utcnow()}
        for p in by_id.values()
    ]
    if not rows:
        return
    stmt = insert_for(session, Product).values(rows)
    changes = {c: func.coalesce(stmt.excluded[c], getattr(Product, c)) for c in columns}
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"], set_=changes | {"updated_at": stmt.excluded.updated_at}
    )
    await session.execute(stmt)


async def upsert_cart(
    session: AsyncSession, cart: ev.CartIn, contact_id: int, occurred_at: datetime
) -> bool:
    stmt = insert_for(session, Cart).values(
        token=cart.token,
        contact_id=contact_id,
        currency=cart.currency,
        checkout_url=cart.checkout_url,
        updated_at=occurred_at,
    )
    # Events can arrive out of order: an older snapshot of the cart never replaces a newer one.
    stmt = stmt.on_conflict_do_update(
        index_elements=["token"],
        set_={
            "contact_id": stmt.excluded.contact_id,
            "currency": stmt.excluded.currency,
            "checkout_url": stmt.excluded.checkout_url,
            "updated_at": stmt.excluded.updated_at,
        },
        where=Cart.updated_at <= stmt.excluded.updated_at,
    )
    if not rowcount(await session.execute(stmt)):
        return False
    await session.execute(delete(CartLine).where(CartLine.cart_token == cart.token))
    if cart.lines:
        await session.execute(
            insert_for(session, CartLine).values(
                [
                    {
                        "cart_token": cart.token,
                        "position": i,
                        **line.model_dump(exclude={"category"}),
                    }
                    for i, line in enumerate(cart.lines)
                ]
            )
        )
        await upsert_products(
            session,
            [
                {
                    "id": line.product_id,
                    "currency": cart.currency,
                    **line.model_dump(exclude={"product_id", "quantity"}),
                }
                for line in cart.lines
            ],
        )
    return True


async def insert_order(
    session: AsyncSession,
    order: ev.OrderIn,
    contact_id: int,
    placed_at: datetime,
    settings: Settings,
) -> loyalty.TierChange | None:
    """Store a new order with its lines, apply its discount code and earn its points; an order
    already stored (a replay) changes nothing."""
    stmt = (
        insert_for(session, Order)
        .values(
            id=order.id,
            contact_id=contact_id,
            cart_token=order.cart_token,
            currency=order.currency,
            total=order.total,
            placed_at=placed_at,
            status="placed",
            discount_code=order.discount_code,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    if not rowcount(await session.execute(stmt)):
        return None
    await _insert_lines(session, order)
    await _apply_discount_code(session, order, contact_id, placed_at, settings)
    return await loyalty.on_order(
        session,
        settings,
        contact_id=contact_id,
        order_id=order.id,
        total=order.total,
        at=placed_at,
    )


async def _insert_lines(session: AsyncSession, order: ev.OrderIn) -> None:
    """The new order's lines, and what they teach about the products in them."""
    if not order.lines:
        return
    await session.execute(
        insert_for(session, OrderLine).values(
            [
                {
                    "order_id": order.id,
                    "position": i,
                    **line.model_dump(exclude={"category"}),
                }
                for i, line in enumerate(order.lines)
            ]
        )
    )
    await upsert_products(
        session,
        [
            {"id": line.product_id, "title": line.title, "category": line.category}
            for line in order.lines
        ],
    )


async def _apply_discount_code(
    session: AsyncSession,
    order: ev.OrderIn,
    contact_id: int,
    placed_at: datetime,
    settings: Settings,
) -> None:
    # Only Nudge's own codes are checked: a store's other codes (SUMMER10) are none of our
    # business, while a code with our prefix that we never issued is flagged as refused.
    if not order.discount_code or not coupons.normalise(order.discount_code).startswith(
        f"{coupons.normalise(settings.coupon_prefix)}-"
    ):
        return
    subtotal = sum((line.price * line.quantity for line in order.lines), start=Decimal(0))
    await coupons.redeem(
        session,
        code=order.discount_code,
        order_id=order.id,
        contact_id=contact_id,
        subtotal=subtotal if order.lines else order.total,
        currency=order.currency,
        placed_at=placed_at,
    )


async def has_converted(
    session: AsyncSession, contact_id: int, cart_token: str | None, since: datetime
) -> bool:
    """An order for this cart, or any order by the contact since the journey started."""
    condition = and_(Order.contact_id == contact_id, Order.placed_at >= since)
    if cart_token:
        condition = or_(condition, Order.cart_token == cart_token)
    return bool(await session.scalar(select(exists().where(condition))))


async def get_cart(session: AsyncSession, token: str) -> Cart | None:
    return await session.get(Cart, token)
