"""A contact's orders as segments count them, and the RFM scores ranked over them.

An order counts unless it is refunded (`REFUNDED`; the activities count orders the same way).
`order_totals` is the per-contact aggregate both the compiler's order conditions and the RFM
ranking read: how many orders, how much spent in exact cents, when the last one was placed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, FunctionElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from nudge.storage.models import Order

REFUNDED = "refunded"

# ---- order totals --------------------------------------------------------------------------


class _Cents(FunctionElement[Any]):
    """An amount in cents, exact on both backends: PostgreSQL's NUMERIC is exact already, SQLite
    stores REAL, so it is rounded to an integer number of cents before any sum."""

    name = "cents"
    inherit_cache = True


@compiles(_Cents)
def _cents_default(element: _Cents, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(ROUND(({compiler.process(element.clauses, **kw)}) * 100) AS BIGINT)"


@compiles(_Cents, "sqlite")
def _cents_sqlite(element: _Cents, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(ROUND(({compiler.process(element.clauses, **kw)}) * 100) AS INTEGER)"


@compiles(_Cents, "postgresql")
def _cents_pg(element: _Cents, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(({compiler.process(element.clauses, **kw)}) * 100)"


def order_totals(*where: ColumnElement[bool]) -> Select[Any]:
    """Per contact with a counted order matching `where`: `orders`, `cents` (the sum of their
    totals) and `last_at` (the newest one's time), keyed by `contact_id`."""
    return (
        select(
            Order.contact_id.label("contact_id"),
            func.count().label("orders"),
            func.sum(_Cents(Order.total)).label("cents"),
            func.max(Order.placed_at).label("last_at"),
        )
        .where(Order.status != REFUNDED, *where)
        .group_by(Order.contact_id)
    )


def order_aggregates(*where: ColumnElement[bool]) -> dict[str, ColumnElement[Any]]:
    """The columns of `order_totals` as scalar subqueries (correlate `where` with the outer
    query): `orders` is 0, `cents` and `last_at` NULL without a counted order, as an outer join
    on `order_totals` gives them."""

    def scalar(aggregate: ColumnElement[Any]) -> ColumnElement[Any]:
        return select(aggregate).where(Order.status != REFUNDED, *where).scalar_subquery()

    return {
        "orders": scalar(func.count()),
        "cents": scalar(func.sum(_Cents(Order.total))),
        "last_at": scalar(func.max(Order.placed_at)),
    }


# ---- RFM -----------------------------------------------------------------------------------


def _score(order_by: Any) -> ColumnElement[int]:
    # Quintile of the rank among all buyers; equal values share a rank, so they share a score.
    rank = func.rank().over(order_by=order_by)
    score: ColumnElement[int] = 1 + ((rank - 1) * 5) // func.count().over()
    return score


def rfm_query() -> Select[Any]:
    """Recency, frequency and monetary scores, 1-5 each, of every contact with an order
    (refunded orders excluded): 5 is the most recent last order, the most orders, the most
    spent. A score is the quintile of the contact's rank among all buyers, ties sharing a rank:
    `1 + floor(5 * (rank - 1) / buyers)`, the same on SQLite and PostgreSQL."""
    buyers = order_totals().subquery("buyers")
    return select(
        buyers.c.contact_id,
        _score(buyers.c.last_at).label("recency"),
        _score(buyers.c.orders).label("frequency"),
        _score(buyers.c.cents).label("monetary"),
        buyers.c.orders,
        buyers.c.cents,
        buyers.c.last_at,
    )


@dataclass(frozen=True)
class Rfm:
    contact_id: int
    recency: int
    frequency: int
    monetary: int
    orders: int
    spent: Decimal
    last_order_at: datetime
    days_since_last_order: int


async def rfm_scores(
    session: AsyncSession, now: datetime, contact_ids: Collection[int] | None = None
) -> dict[int, Rfm]:
    """RFM scores by contact id; contacts without an order have none."""
    scores = rfm_query().subquery("scores")
    query = select(scores)
    if contact_ids is not None:
        query = query.where(scores.c.contact_id.in_(list(contact_ids)))
    out = {}
    for row in (await session.execute(query)).mappings():
        last: datetime = row["last_at"]
        out[int(row["contact_id"])] = Rfm(
            contact_id=int(row["contact_id"]),
            recency=int(row["recency"]),
            frequency=int(row["frequency"]),
            monetary=int(row["monetary"]),
            orders=int(row["orders"]),
            spent=Decimal(int(row["cents"])).scaleb(-2),
            last_order_at=last,
            days_since_last_order=(now - last).days,
        )
    return out
