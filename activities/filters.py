"""Flow filters: conditions re-checked from the database before every marketing message.

A flow lists them by name (`Journey.filters`, or `send(..., filters=...)`); each returns the reason
to skip the message, or None. Re-checking at send time means an event that never reached the
journey as a signal (lost, late, or from before the journey started) still stops it. Reasons in
`workflows.journey.TERMINAL_SKIPS` ("converted", "cart_emptied", "in_cart_flow") end the journey.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.commerce import orders
from nudge.journeys.contracts import SendEmailInput
from nudge.segments.rfm import REFUNDED
from nudge.storage.models import Cart, CartLine, Contact, Order, Product

# How long a cart journey lasts (emails at 2 h, 1 day and 2 days): a cart touched this long
# before a browse journey started may still have its journey running.
CART_FLOW_SPAN = timedelta(days=3)

Filter = Callable[[AsyncSession, SendEmailInput, Contact], Awaitable[str | None]]


async def no_order_since_start(
    session: AsyncSession, job: SendEmailInput, contact: Contact
) -> str | None:
    """Placed no order since the journey started (nor one for the cart the journey is about)."""
    if await orders.has_converted(session, contact.id, job.key, job.journey_started_at):
        return "converted"
    return None


async def cart_open(session: AsyncSession, job: SendEmailInput, contact: Contact) -> str | None:
    """The cart the journey is about still has items."""
    cart = await orders.get_cart(session, job.key)
    return None if cart is not None and cart.lines else "cart_emptied"


async def not_in_cart_flow(
    session: AsyncSession, job: SendEmailInput, contact: Contact
) -> str | None:
    """Has no cart in play: none touched since shortly before the journey started that still
    holds items and was not ordered. Such a contact is in the cart flow, the better email."""
    ordered = exists().where(Order.cart_token == Cart.token)
    open_cart = exists().where(
        Cart.contact_id == contact.id,
        Cart.updated_at >= job.journey_started_at - CART_FLOW_SPAN,
        exists().where(CartLine.cart_token == Cart.token),
        ~ordered,
    )
    return "in_cart_flow" if await session.scalar(select(open_cart)) else None


async def never_ordered(session: AsyncSession, job: SendEmailInput, contact: Contact) -> str | None:
    """Has never placed an order: first-purchase offers are for first purchases."""
    if await session.scalar(select(exists().where(Order.contact_id == contact.id))):
        return "not_first_purchase"
    return None


async def one_order(session: AsyncSession, job: SendEmailInput, contact: Contact) -> str | None:
    """Still exactly one order (refunded ones not counted): a second one is the conversion a
    second-purchase email is after."""
    orders = await session.scalar(
        select(func.count())
        .select_from(Order)
        .where(Order.contact_id == contact.id, Order.status != REFUNDED)
    )
    return "converted" if (orders or 0) > 1 else None


async def product_in_stock(
    session: AsyncSession, job: SendEmailInput, contact: Contact
) -> str | None:
    """The product the journey is about (its key: back in stock, price drop) is in stock: a
    product sold out again is not announced."""
    product = await session.get(Product, job.key)
    return None if product is not None and product.in_stock else "out_of_stock"


BUILT_IN: Mapping[str, Filter] = {
    "no_order_since_start": no_order_since_start,
    "cart_open": cart_open,
    "not_in_cart_flow": not_in_cart_flow,
    "never_ordered": never_ordered,
    "one_order": one_order,
    "product_in_stock": product_in_stock,
}
# What journeys started before flows declared their filters send without any (`filters=None`).
LEGACY: Mapping[str, tuple[str, ...]] = {
    "cart_abandonment": ("no_order_since_start", "cart_open"),
}
