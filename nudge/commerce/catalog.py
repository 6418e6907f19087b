"""The store's product catalogue (`POST /v1/products`) and the events its changes raise.

A product that comes back in stock raises `back_in_stock` for each contact who asked to be told
(`back_in_stock_requested`) or viewed it in the last `INTEREST_DAYS`; a lower price raises
`price_dropped` for each contact who viewed it then. Nobody who ordered the product since their
last request or view is told, nor anyone unsubscribed.

Changes are measured against what the catalogue itself said last (`products.catalog_in_stock`,
`products.catalog_price`), not against what events taught Nudge: a `product_viewed` that already
carries the new price (or `in_stock` left to its default) must not swallow the drop or the
restock. Before a product's first catalogue post, what events told stands in.

The derived events are stored unrouted in the transaction that changes the catalogue, with ids
that depend only on the change; the caller routes them (`pending`), then marks them routed, so a
crash in between delays them but cannot lose them: a retried post routes what was left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.storage.db import insert_for
from nudge.storage.models import Consent, Contact, Order, OrderLine, Product, StoreEvent, utcnow

INTEREST_DAYS = 30
#: The internal events a catalogue change raises.
DERIVED_TYPES = ("back_in_stock", "price_dropped")
#: The contact events that make a contact interested in a restock / in a price drop.
RESTOCK_INTEREST = ("product_viewed", "back_in_stock_requested")
PRICE_INTEREST = ("product_viewed",)


@dataclass(frozen=True, slots=True)
class Change:
    """One product's catalogue change that concerns contacts."""

    product: ev.ProductIn
    restocked: bool
    old_price: Decimal | None  # set when the price dropped


def derived_id(type: str, product_id: str, contact_id: int, change: str) -> str:
    """The id of the `type` event one catalogue change raises for one contact: the same for the
    same change, so a change that is seen twice (two concurrent posts) is stored once."""
    digest = hashlib.sha256(f"{type}\x1f{product_id}\x1f{contact_id}\x1f{change}".encode())
    return f"{type}:{contact_id}:{digest.hexdigest()[:40]}"


async def apply(
    session: AsyncSession, products: Sequence[ev.ProductIn], now: datetime | None = None
) -> int:
    """Upsert `products` (the last of one id wins) and store, unrouted, the events their stock
    and price changes raise. Returns how many events were stored."""
    now = now or utcnow()
    by_id = {p.id: p for p in products}
    # Locked (PostgreSQL) so that two concurrent posts cannot both see the product out of stock.
    rows = {
        row.id: row
        for row in await session.scalars(
            select(Product)
            .where(Product.id.in_(list(by_id)))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    changes: list[tuple[Change, str]] = []
    for product in by_id.values():
        row = rows.get(product.id)
        if row is None:
            continue  # never seen: nobody can have viewed or asked for it
        was_in_stock = row.catalog_in_stock if row.catalog_in_stock is not None else row.in_stock
        old_price = row.catalog_price if row.catalog_price is not None else row.price
        same_currency = not (product.currency and row.currency) or product.currency == row.currency
        dropped = (
            product.in_stock
            and product.price is not None
            and old_price is not None
            and same_currency
            and product.price < old_price
        )
        restocked = product.in_stock and not was_in_stock
        if restocked or dropped:
            # What the product was before, so the same change gives the same event ids.
            before = f"{was_in_stock}:{old_price}:{row.updated_at.isoformat()}"
            changes.append((Change(product, restocked, old_price if dropped else None), before))
    await _upsert(session, list(by_id.values()), now)
    stored = 0
    for change, before in changes:
        stored += await _raise_events(session, change, before, now)
    return stored


async def _upsert(session: AsyncSession, products: Sequence[ev.ProductIn], now: datetime) -> None:
    if not products:
        return
    columns = ("title", "url", "image_url", "price", "currency", "category")
    rows = [
        {
            **p.model_dump(include={"id", *columns, "in_stock"}),
            "catalog_in_stock": p.in_stock,
            "catalog_price": p.price,
            "updated_at": now,
        }
        for p in products
    ]
    stmt = insert_for(session, Product).values(rows)
    # A field the post leaves out keeps what is known; stock is always the catalogue's word.
    changes = {c: func.coalesce(stmt.excluded[c], getattr(Product, c)) for c in columns}
    changes["catalog_price"] = func.coalesce(stmt.excluded.catalog_price, Product.catalog_price)
    for c in ("in_stock", "catalog_in_stock", "updated_at"):
        changes[c] = stmt.excluded[c]
    await session.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=changes))


async def _raise_events(session: AsyncSession, change: Change, before: str, now: datetime) -> int:
    product = change.product
    stored = 0
    if change.restocked:
        for contact_id, email in await interested(session, product.id, RESTOCK_INTEREST, now):
            event: ev.StoreEventIn = ev.BackInStock(
                id=derived_id("back_in_stock", product.id, contact_id, before),
                type="back_in_stock",
                occurred_at=now,
                contact=ev.ContactIn(email=email),
                product=product,
            )
            stored += await event_log.record_event(
                session, event, contact_id, event.model_dump(mode="json")
            )
    if change.old_price is not None and product.price is not None:
        for contact_id, email in await interested(session, product.id, PRICE_INTEREST, now):
            event = ev.PriceDropped(
                id=derived_id("price_dropped", product.id, contact_id, before),
                type="price_dropped",
                occurred_at=now,
                contact=ev.ContactIn(email=email),
                product=product,
                price=ev.PriceChangeIn(old=change.old_price, new=product.price),
            )
            stored += await event_log.record_event(
                session, event, contact_id, event.model_dump(mode="json")
            )
    return stored


async def interested(
    session: AsyncSession, product_id: str, kinds: Sequence[str], now: datetime
) -> list[tuple[int, str]]:
    """(contact id, email) of everyone not unsubscribed who showed interest of `kinds` in the
    product in the last `INTEREST_DAYS` and has not ordered it since their last sign of it."""
    last_interest = func.max(StoreEvent.occurred_at)
    rows = (
        await session.execute(
            select(StoreEvent.contact_id, Contact.email, last_interest)
            .join(Contact, Contact.id == StoreEvent.contact_id)
            .where(
                StoreEvent.product_id == product_id,
                StoreEvent.type.in_(list(kinds)),
                StoreEvent.occurred_at >= now - timedelta(days=INTEREST_DAYS),
                Contact.consent != Consent.UNSUBSCRIBED,
            )
            .group_by(StoreEvent.contact_id, Contact.email)
            .order_by(StoreEvent.contact_id)
        )
    ).all()
    if not rows:
        return []
    ordered = await session.execute(
        select(Order.contact_id, func.max(Order.placed_at))
        .join(OrderLine, OrderLine.order_id == Order.id)
        .where(OrderLine.product_id == product_id, Order.contact_id.in_([r[0] for r in rows]))
        .group_by(Order.contact_id)
    )
    last_order: dict[int, datetime] = {c: at for c, at in ordered.all()}
    return [
        (contact_id, email)
        for contact_id, email, seen in rows
        if contact_id not in last_order or last_order[contact_id] < seen
    ]


async def pending(
    session: AsyncSession, product_ids: Sequence[str], limit: int = 500
) -> list[tuple[int, ev.StoreEventIn]]:
    """(contact id, event) of the derived events about these products not routed yet, oldest
    first: route each like a store event, then `event_log.mark_routed` it."""
    rows = await session.scalars(
        select(StoreEvent)
        .where(
            StoreEvent.product_id.in_(list(product_ids)),
            StoreEvent.type.in_(DERIVED_TYPES),
            StoreEvent.routed_at.is_(None),
        )
        .order_by(StoreEvent.occurred_at, StoreEvent.id)
        .limit(limit)
    )
    return [(row.contact_id, ev.stored_event_adapter.validate_python(row.payload)) for row in rows]


async def price_change(session: AsyncSession, event_id: str) -> ev.PriceChangeIn | None:
    """The old and new price of a stored `price_dropped` event (a journey's trigger)."""
    row = await session.get(StoreEvent, event_id)
    if row is None or row.type != "price_dropped":
        return None
    return ev.PriceChangeIn.model_validate(row.payload["price"])
