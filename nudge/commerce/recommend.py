"""Product recommendations, in SQL on SQLite and PostgreSQL alike.

Three strategies, each returning products best first (score descending, then product id, so the
same data always gives the same list):
  - `bought_together`: products that share orders with the given ones (score: how many orders);
  - `popular`: products in the most orders of the last `days` (score: how many orders);
  - `similar`: products in the same category as the given ones (score: how many of them share it).
Every query applies the same exclusions: never a product the contact already bought, one in the
trigger cart (or otherwise excluded), one out of stock, or one without an image.
`recommend` blends them: bought together first, then similar, then popular, without repeats.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, distinct, exists, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from nudge.storage.models import Order, OrderLine, Product


@dataclass(frozen=True)
class Exclude:
    """What may never be recommended, besides products out of stock or without an image."""

    #: Whose purchases (any order line, ever) are excluded.
    contact_id: int | None = None
    #: Further products: the trigger cart, products already chosen.
    product_ids: Collection[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Recommendation:
    product: Product
    strategy: str
    score: int


def _eligible(exclude: Exclude) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = [
        Product.in_stock.is_(True),
        Product.image_url.is_not(None),
        Product.image_url != "",
    ]
    if exclude.product_ids:
        conditions.append(Product.id.not_in(list(exclude.product_ids)))
    if exclude.contact_id is not None:
        bought = (
            select(literal(1))
            .select_from(OrderLine)
            .join(Order, Order.id == OrderLine.order_id)
            .where(Order.contact_id == exclude.contact_id, OrderLine.product_id == Product.id)
        )
        conditions.append(~exists(bought))
    return and_(*conditions)


async def _ranked(
    session: AsyncSession, query: Select[Product, int], score: Any, strategy: str, limit: int
) -> list[Recommendation]:
    """One product per row, best score first and then by id, so equal data ranks alike."""
    rows = await session.execute(
        query.group_by(Product.id).order_by(score.desc(), Product.id).limit(limit)
    )
    return [Recommendation(p, strategy, int(n)) for p, n in rows]


async def bought_together(
    session: AsyncSession,
    product_ids: Sequence[str],
    *,
    exclude: Exclude = Exclude(),
    limit: int = 3,
) -> list[Recommendation]:
    """Products bought in the same orders as `product_ids`, most shared orders first."""
    if not product_ids or limit <= 0:
        return []
    seed, other = aliased(OrderLine), aliased(OrderLine)
    score = func.count(distinct(other.order_id)).label("score")
    query = (
        select(Product, score)
        .select_from(seed)
        .join(other, other.order_id == seed.order_id)
        .join(Product, Product.id == other.product_id)
        .where(
            seed.product_id.in_(list(product_ids)),
            other.product_id.not_in(list(product_ids)),
            _eligible(exclude),
        )
    )
    return await _ranked(session, query, score, "bought_together", limit)


async def popular(
    session: AsyncSession,
    now: datetime,
    days: int = 90,
    *,
    exclude: Exclude = Exclude(),
    limit: int = 3,
) -> list[Recommendation]:
    """Products in the most orders placed in the `days` before `now`."""
    if limit <= 0:
        return []
    score = func.count(distinct(OrderLine.order_id)).label("score")
    query = (
        select(Product, score)
        .select_from(OrderLine)
        .join(Order, Order.id == OrderLine.order_id)
        .join(Product, Product.id == OrderLine.product_id)
        .where(
            Order.placed_at > now - timedelta(days=days),
            Order.placed_at <= now,
            _eligible(exclude),
        )
    )
    return await _ranked(session, query, score, "popular", limit)


async def similar(
    session: AsyncSession,
    product_ids: Sequence[str],
    *,
    exclude: Exclude = Exclude(),
    limit: int = 3,
) -> list[Recommendation]:
    """Products in the categories of `product_ids`; a category more of them share ranks first."""
    if not product_ids or limit <= 0:
        return []
    seed = aliased(Product)
    score = func.count(distinct(seed.id)).label("score")
    query = (
        select(Product, score)
        .join(seed, seed.category == Product.category)
        .where(
            seed.id.in_(list(product_ids)),
            seed.category.is_not(None),
            Product.id.not_in(list(product_ids)),
            _eligible(exclude),
        )
    )
    return await _ranked(session, query, score, "similar", limit)


async def recommend(
    session: AsyncSession,
    contact_id: int,
    cart_product_ids: Sequence[str],
    now: datetime,
    limit: int = 3,
) -> list[Recommendation]:
    """Up to `limit` products for a contact with this cart: bought together with the cart, then
    similar to it, then popular; never one they bought, one in the cart, out of stock or
    without an image."""
    chosen: list[Recommendation] = []
    for strategy in ("bought_together", "similar", "popular"):
        wanted = limit - len(chosen)
        if wanted <= 0:
            break
        exclude = Exclude(
            contact_id=contact_id,
            product_ids=frozenset(cart_product_ids) | {r.product.id for r in chosen},
        )
        if strategy == "bought_together":
            found = await bought_together(session, cart_product_ids, exclude=exclude, limit=wanted)
        elif strategy == "similar":
            found = await similar(session, cart_product_ids, exclude=exclude, limit=wanted)
        else:
            found = await popular(session, now, exclude=exclude, limit=wanted)
        chosen += found
    return chosen
