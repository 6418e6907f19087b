"""Report figures per flow, step, variant, segment and day: SQL aggregates over the message log,
its events and the orders, the same on SQLite and PostgreSQL. Nothing here loads message rows
into Python; a query returns one row per group.

Definitions (README "Tracking and reports"):
  - a report covers the messages *sent* in the period (`messages.sent_at`), whenever their
    opens, clicks and orders came: each email is judged on everything it earned;
  - delivered = sent - bounced; unique opens = delivered-or-not messages opened or clicked by a
    person (a click proves an open that blocked images hid); unique clicks likewise, machine
    events (nudge/mail/tracking.py) excluded;
  - open, click, conversion rate and RPR are per delivered message; click-to-open = clicks /
    opens; a conversion is an attributed order, the conversion rate counts messages with at
    least one (so it is a proportion);
  - attribution: an order goes to the last non-transactional email the contact clicked within
    `NUDGE_ATTRIBUTION_CLICK_DAYS` or opened within `NUDGE_ATTRIBUTION_OPEN_DAYS` before it was
    placed (by a person); refunded orders are not counted;
  - per segment means contacts who are members of the segment now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Numeric,
    RowMapping,
    Select,
    Subquery,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from nudge.settings import Settings
from nudge.storage.models import Message, MessageEvent, MessageStatus, Order, SegmentMember

Dimension = Literal["flow", "step", "variant", "day"]
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) of `messages.sent_at`; None is open-ended."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Figures:
    sent: int = 0
    bounced: int = 0
    opens: int = 0
    clicks: int = 0
    machine_opens: int = 0
    machine_clicks: int = 0
    conversions: int = 0
    converted: int = 0
    revenue: Decimal = Decimal("0.00")
    unsubscribes: int = 0
    complaints: int = 0

    @property
    def delivered(self) -> int:
        return self.sent - self.bounced

    @property
    def open_rate(self) -> float | None:
        return _ratio(self.opens, self.delivered)

    @property
    def click_rate(self) -> float | None:
        return _ratio(self.clicks, self.delivered)

    @property
    def click_to_open_rate(self) -> float | None:
        return _ratio(self.clicks, self.opens)

    @property
    def conversion_rate(self) -> float | None:
        return _ratio(self.converted, self.delivered)

    @property
    def revenue_per_recipient(self) -> Decimal | None:
        if not self.delivered:
            return None
        return (self.revenue / self.delivered).quantize(CENT, ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Row:
    keys: dict[str, str | None]
    figures: Figures


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _minus(session: AsyncSession, moment: Any, seconds: float) -> ColumnElement[Any]:
    """`moment - seconds` in SQL. SQLite keeps UTC datetimes as ISO text, so the result is text
    of the same shape (and compares the same way)."""
    if _dialect(session) == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f", moment, f"-{seconds:f} seconds")
    return moment - literal(timedelta(seconds=seconds))  # type: ignore[no-any-return]


def _day(session: AsyncSession, moment: Any) -> ColumnElement[Any]:
    if _dialect(session) == "sqlite":
        return func.strftime("%Y-%m-%d", moment)
    return func.to_char(func.timezone("UTC", moment), "YYYY-MM-DD")


def _flag(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.max(case((condition, 1), else_=0))


def attributed_orders(
    session: AsyncSession, settings: Settings, since: Any = None, contacts: Any = None
) -> Any:
    """Subquery (order_id, message_id, total): each order placed since `since` (a datetime or
    a scalar subquery; by one of
    `contacts`, a subquery of contact ids, if given) with the email it is attributed to (NULL
    when none)."""
    event, message = aliased(MessageEvent), aliased(Message)
    click_from = _minus(session, Order.placed_at, settings.attribution_click_days * 86400)
    open_from = _minus(session, Order.placed_at, settings.attribution_open_days * 86400)
    # A row counts repeats (first `at`, latest `last_at`): the touch is the latest repeat up to
    # the order when that is known (`last_at` before it), else the first.
    latest = func.coalesce(event.last_at, event.at)
    touched = case((latest <= Order.placed_at, latest), else_=event.at)
    last_touch = (
        select(event.message_id)
        .join(message, message.message_id == event.message_id)
        .where(
            event.contact_id == Order.contact_id,
            event.machine == false(),
            event.at <= Order.placed_at,
            or_(
                and_(event.kind == "click", touched >= click_from),
                and_(event.kind == "open", touched >= open_from),
            ),
            message.transactional == false(),
        )
        # (By the latest repeat: SQLite cannot order a correlated subquery by an outer column.)
        .order_by(latest.desc(), event.id.desc())
        .limit(1)
        .correlate(Order)
        .scalar_subquery()
    )
    query = select(
        Order.id.label("order_id"),
        last_touch.label("message_id"),
        Order.total.label("total"),
    ).where(Order.status != "refunded")
    if since is not None:
        query = query.where(Order.placed_at >= since)
    if contacts is not None:
        query = query.where(Order.contact_id.in_(contacts))
    return query.subquery("attributed")


async def figures(
    session: AsyncSession,
    settings: Settings,
    *,
    period: Period = Period(),
    flow: str | None = None,
    step: str | None = None,
    segment: str | None = None,
    by: Sequence[Dimension] = (),
) -> list[Row]:
    """One row of figures per group of `by` (a single row for no grouping)."""
    scope = _scope(period, flow=flow, step=step, segment=segment)
    in_scope = select(Message.message_id).where(*scope)
    events = _events_per_message(in_scope)
    orders = _orders_per_message(session, settings, scope, in_scope)
    columns: dict[str, Any] = {
        "flow": Message.flow,
        "step": Message.step,
        "variant": Message.variant,
        "day": _day(session, Message.sent_at),
    }
    keys = [columns[name].label(name) for name in by]
    query = (
        select(
            *keys,
            func.count().label("sent"),
            _total(events.c.bounced).label("bounced"),
            _total(events.c.opened).label("opens"),
            _total(events.c.clicked).label("clicks"),
            _total(events.c.m_opened).label("machine_opens"),
            _total(events.c.m_clicked).label("machine_clicks"),
            _total(orders.c.orders).label("conversions"),
            _total(case((orders.c.orders > 0, 1), else_=0)).label("converted"),
            cast(_total(orders.c.revenue), Numeric(14, 2)).label("revenue"),
            _total(events.c.unsubscribed).label("unsubscribes"),
            _total(events.c.complained).label("complaints"),
        )
        .select_from(Message)
        .outerjoin(events, events.c.message_id == Message.message_id)
        .outerjoin(orders, orders.c.message_id == Message.message_id)
        .where(*scope)
    )
    if keys:
        query = query.group_by(*keys).order_by(*keys)
    result = await session.execute(query)
    rows = [_row(row, by) for row in result.mappings()]
    if not by and rows and rows[0].figures.sent == 0:
        return [Row({}, Figures())]
    return rows


def _scope(
    period: Period, *, flow: str | None, step: str | None, segment: str | None
) -> list[ColumnElement[bool]]:
    """The conditions on `messages` that select the messages a report covers."""
    scope = [Message.status == MessageStatus.SENT, Message.sent_at.is_not(None)]
    if period.start is not None:
        scope.append(Message.sent_at >= period.start)
    if period.end is not None:
        scope.append(Message.sent_at < period.end)
    if flow is not None:
        scope.append(Message.flow == flow)
    if step is not None:
        scope.append(Message.step == step)
    if segment is not None:
        members = select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment)
        scope.append(Message.contact_id.in_(members))
    return scope


def _events_per_message(in_scope: Select[Any]) -> Subquery:
    """One row per message in scope with events: 1/0 flags for what happened to it."""
    human = MessageEvent.machine == false()
    return (
        select(
            MessageEvent.message_id.label("message_id"),
            _flag(and_(human, MessageEvent.kind.in_(("open", "click")))).label("opened"),
            _flag(and_(human, MessageEvent.kind == "click")).label("clicked"),
            _flag(and_(MessageEvent.machine, MessageEvent.kind == "open")).label("m_opened"),
            _flag(and_(MessageEvent.machine, MessageEvent.kind == "click")).label("m_clicked"),
            _flag(MessageEvent.kind == "bounce").label("bounced"),
            _flag(MessageEvent.kind == "complaint").label("complained"),
            _flag(MessageEvent.kind == "unsubscribe").label("unsubscribed"),
        )
        .where(MessageEvent.message_id.in_(in_scope))
        .group_by(MessageEvent.message_id)
        .subquery("per_message_events")
    )


def _orders_per_message(
    session: AsyncSession,
    settings: Settings,
    scope: Sequence[ColumnElement[bool]],
    in_scope: Select[Any],
) -> Subquery:
    """One row per message in scope with attributed orders: how many, and their revenue."""
    # Only orders that can be these messages': their contacts', placed after the first send.
    first_send = select(func.min(Message.sent_at)).where(*scope).scalar_subquery()
    attributed = attributed_orders(
        session, settings, first_send, contacts=select(Message.contact_id).where(*scope)
    )
    return (
        select(
            attributed.c.message_id,
            func.count().label("orders"),
            func.sum(attributed.c.total).label("revenue"),
        )
        .where(attributed.c.message_id.in_(in_scope))
        .group_by(attributed.c.message_id)
        .subquery("per_message_orders")
    )


def _total(column: Any) -> ColumnElement[Any]:
    return func.coalesce(func.sum(column), 0)


def _row(row: RowMapping, by: Sequence[Dimension]) -> Row:
    values: dict[str, str | None] = {name: row[name] for name in by}
    count = {name: int(row[name] or 0) for name in _COUNTS}
    revenue = Decimal(str(row["revenue"] or 0)).quantize(CENT, ROUND_HALF_UP)
    return Row(values, Figures(**count, revenue=revenue))


_COUNTS = (
    "sent",
    "bounced",
    "opens",
    "clicks",
    "machine_opens",
    "machine_clicks",
    "conversions",
    "converted",
    "unsubscribes",
    "complaints",
)


async def totals(session: AsyncSession, settings: Settings, **scope: Any) -> Figures:
    [row] = await figures(session, settings, **scope)
    return row.figures


async def flows_sent(session: AsyncSession, period: Period = Period()) -> list[str]:
    """The flows with messages sent in the period."""
    query = select(Message.flow).where(Message.status == MessageStatus.SENT).distinct()
    if period.start is not None:
        query = query.where(Message.sent_at >= period.start)
    if period.end is not None:
        query = query.where(Message.sent_at < period.end)
    return sorted(await session.scalars(query))


async def templates_of(session: AsyncSession, flow: str) -> list[tuple[str, str]]:
    """(step, template) pairs a flow has logged, in the order first used."""
    query = (
        select(Message.step, Message.template, func.min(Message.created_at).label("first"))
        .where(Message.flow == flow)
        .group_by(Message.step, Message.template)
        .order_by("first")
    )
    return [(step, template) for step, template, _ in (await session.execute(query)).all()]
