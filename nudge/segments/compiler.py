"""A segment definition compiled to ONE SQLAlchemy Core `SELECT contacts.id ...`.

The query runs on SQLite and PostgreSQL alike: per-contact aggregates (order count and spend,
last order time, emails received, RFM scores) are LEFT JOINed derived tables, one per distinct
time window; existence checks (tags, product views, opens and clicks, open carts) are correlated
EXISTS. Every leaf compiles to a two-valued expression, so `not` never meets a NULL. `now` is a
parameter, so the same definition evaluates the same way in a test and in production; restricted
to one contact (the aggregates filtered by that contact too) it is a handful of index lookups.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    ColumnElement,
    Float,
    FunctionElement,
    Select,
    String,
    Subquery,
    and_,
    bindparam,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler

from nudge.segments.definition import (
    AllOf,
    AnyOf,
    CartOpenCondition,
    Condition,
    ConsentCondition,
    CountRange,
    CreatedCondition,
    EmailsReceivedCondition,
    EngagementCondition,
    LastOrderCondition,
    MoneyRange,
    NotOf,
    OrdersCondition,
    PropertyCondition,
    RfmCondition,
    ScoreRange,
    TagCondition,
    ViewedProductCondition,
)
from nudge.segments.rfm import order_aggregates, order_totals, rfm_query
from nudge.storage.models import (
    Cart,
    CartLine,
    Contact,
    ContactTag,
    Message,
    MessageEvent,
    MessageStatus,
    Order,
    StoreEvent,
    UTCDateTime,
)

# ---- a JSON property, typed, on SQLite and PostgreSQL --------------------------------------


class _JsonProperty(FunctionElement[Any]):
    """One top-level key of a JSON column, typed: the value where its JSON type is the
    subclass's (text, number, boolean) and NULL otherwise; `_JsonPresent` is whether it is set.
    One subclass per type, so that the statement cache tells them apart."""

    inherit_cache = True
    as_: ClassVar[str]

    def __init__(self, column: Any, key: str) -> None:
        # SQLite addresses the key by a JSON path, PostgreSQL by name: bind both, use one.
        super().__init__(column, literal(key, String()), literal(f'$."{key}"', String()))


class _JsonText(_JsonProperty):
    inherit_cache = True
    as_ = "text"
    type = String()


class _JsonNumber(_JsonProperty):
    inherit_cache = True
    as_ = "number"
    type = Float()


class _JsonBoolean(_JsonProperty):
    inherit_cache = True
    as_ = "boolean"
    type = Boolean()


class _JsonPresent(_JsonProperty):
    inherit_cache = True
    as_ = "present"
    type = Boolean()


@compiles(_JsonProperty, "sqlite")
def _json_sqlite(element: _JsonProperty, compiler: SQLCompiler, **kw: Any) -> str:
    # Only the binds rendered may be processed: each one processed takes a positional slot.
    column_, _key, path_ = element.clauses
    column, path = compiler.process(column_, **kw), compiler.process(path_, **kw)
    kind = f"json_type({column}, {path})"
    value = f"json_extract({column}, {path})"
    match element.as_:
        case "text":
            return f"(CASE WHEN {kind} = 'text' THEN {value} END)"
        case "number":
            return f"(CASE WHEN {kind} IN ('integer', 'real') THEN {value} END)"
        case "boolean":
            return f"(CASE {kind} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"
    return f"(COALESCE({kind}, 'null') <> 'null')"


@compiles(_JsonProperty, "postgresql")
def _json_pg(element: _JsonProperty, compiler: SQLCompiler, **kw: Any) -> str:
    column_, key_, _path = element.clauses
    column, key = compiler.process(column_, **kw), compiler.process(key_, **kw)
    kind = f"json_typeof({column} -> {key})"
    value = f"({column} ->> {key})"
    match element.as_:
        case "text":
            return f"(CASE WHEN {kind} = 'string' THEN {value} END)"
        case "number":
            return f"(CASE WHEN {kind} = 'number' THEN CAST({value} AS DOUBLE PRECISION) END)"
        case "boolean":
            return f"(CASE WHEN {kind} = 'boolean' THEN CAST({value} AS BOOLEAN) END)"
    return f"(COALESCE({kind}, 'null') <> 'null')"


# ---- comparisons that are never unknown ----------------------------------------------------


def _two_valued(expr: ColumnElement[Any]) -> ColumnElement[bool]:
    """NULL as false, so that `not` of an unknown is not unknown too."""
    return func.coalesce(expr, false(), type_=Boolean())


def _compare(expr: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
    out: ColumnElement[bool]
    match op:
        case "gt":
            out = expr > value
        case "gte":
            out = expr >= value
        case "lt":
            out = expr < value
        case "lte":
            out = expr <= value
        case _:
            out = expr == value
    return out


def _in_range(
    expr: ColumnElement[Any],
    bounds: CountRange | MoneyRange | ScoreRange,
    convert: Any = lambda v: v,
) -> ColumnElement[bool]:
    return and_(*(_compare(expr, op, convert(v)) for op, v in bounds.bounds()))


def _cents(amount: Decimal) -> BindParameter[int]:
    # BIGINT: a 12-digit amount in cents does not fit a 32-bit parameter.
    return literal(int(amount * 100), BigInteger())


# ---- the compiler --------------------------------------------------------------------------

#: Derived tables joined at most (SQLite joins at most 64 tables): any definition within the
#: limits of nudge.segments.definition compiles, a window past these as a correlated subquery.
MAX_JOINS = 16


class _Columns:
    """An aggregate's columns by name (`.orders`, `.cents`, `.last_at`, `.emails`): a joined
    derived table's, or correlated scalar subqueries."""

    def __init__(self, columns: Any) -> None:
        self.c: Any = columns if not isinstance(columns, dict) else _Named(columns)


class _Named:
    def __init__(self, columns: dict[str, ColumnElement[Any]]) -> None:
        self.__dict__.update(columns)


class _Compiler:
    def __init__(self, now: datetime, contact_id: int | None) -> None:
        if now.tzinfo is None:
            raise ValueError("`now` must be timezone-aware")
        self.now, self.contact_id = now, contact_id
        self.joins: dict[Hashable, Subquery] = {}
        self.columns: dict[Hashable, _Columns] = {}

    # The clock and the contact are named parameters (`since_30`, `contact_id`), so that one
    # built statement serves every contact at every time (see `membership.evaluate_contact`).

    def since(self, days: int) -> BindParameter[datetime]:
        return bindparam(f"since_{days}", self.now - timedelta(days=days), type_=UTCDateTime())

    def contact(self) -> BindParameter[int]:
        return bindparam("contact_id", self.contact_id, type_=BigInteger())

    def _only_contact(self, column: Any) -> list[ColumnElement[bool]]:
        return [column == self.contact()] if self.contact_id is not None else []

    # Per-contact aggregates, one derived table per (source, window), shared by conditions; past
    # MAX_JOINS of them (SQLite joins at most 64 tables), correlated scalar subqueries instead.

    def orders(self, within_days: int | None) -> _Columns:
        key = ("orders", within_days)
        if key not in self.columns:
            conditions = self._only_contact(Order.contact_id)
            if within_days is not None:
                conditions.append(Order.placed_at >= self.since(within_days))
            if len(self.joins) < MAX_JOINS:
                self.joins[key] = order_totals(*conditions).subquery(
                    f"orders_{within_days or 'all'}"
                )
                self.columns[key] = _Columns(self.joins[key].c)
            else:
                where = [Order.contact_id == Contact.id, *conditions]
                self.columns[key] = _Columns(order_aggregates(*where))
        return self.columns[key]

    def emails(self, within_days: int | None) -> _Columns:
        key = ("emails", within_days)
        if key not in self.columns:
            conditions = [
                Message.status == MessageStatus.SENT,
                *self._only_contact(Message.contact_id),
            ]
            if within_days is not None:
                conditions.append(Message.sent_at >= self.since(within_days))
            if len(self.joins) < MAX_JOINS:
                self.joins[key] = (
                    select(Message.contact_id.label("contact_id"), func.count().label("emails"))
                    .where(*conditions)
                    .group_by(Message.contact_id)
                    .subquery(f"emails_{within_days or 'all'}")
                )
                self.columns[key] = _Columns(self.joins[key].c)
            else:
                count = (
                    select(func.count())
                    .where(Message.contact_id == Contact.id, *conditions)
                    .scalar_subquery()
                )
                self.columns[key] = _Columns({"emails": count})
        return self.columns[key]

    def rfm(self) -> Subquery:
        # Ranked over every buyer: a score is relative, so it is never restricted to one contact.
        key = ("rfm",)
        if key not in self.joins:
            self.joins[key] = rfm_query().subquery("rfm")
        return self.joins[key]

    # Conditions: the combinators here, each leaf by a method of its own.

    def condition(self, c: Condition) -> ColumnElement[bool]:
        match c:
            case AllOf(all_=children):
                return and_(*(self.condition(child) for child in children))
            case AnyOf(any_=children):
                return or_(*(self.condition(child) for child in children))
            case NotOf(not_=child):
                return not_(self.condition(child))
            case OrdersCondition():
                return self.ordered(c)
            case LastOrderCondition(older_than_days=days):
                return self.last_ordered_before(days)
            case ViewedProductCondition():
                return self.viewed(c)
            case PropertyCondition():
                return self.property(c)
            case TagCondition(tag=tag):
                return exists().where(ContactTag.contact_id == Contact.id, ContactTag.tag == tag)
            case ConsentCondition():
                return self.consent(c)
            case EngagementCondition(within_days=days, kinds=kinds):
                return self.engaged(days, kinds)
            case EmailsReceivedCondition(count=count, within_days=days):
                return _in_range(func.coalesce(self.emails(days).c.emails, 0), count)
            case CartOpenCondition(within_days=days):
                return self.cart_open(days)
            case CreatedCondition():
                return self.created(c)
            case RfmCondition():
                return self.scored(c)
        raise TypeError(f"not a condition: {c!r}")  # pragma: no cover

    def ordered(self, c: OrdersCondition) -> ColumnElement[bool]:
        agg = self.orders(c.within_days)
        parts = []
        if c.count is not None:
            parts.append(_in_range(func.coalesce(agg.c.orders, 0), c.count))
        if c.total is not None:
            parts.append(_in_range(func.coalesce(agg.c.cents, 0), c.total, _cents))
        return and_(*parts)

    def last_ordered_before(self, days: int) -> ColumnElement[bool]:
        agg = self.orders(None)
        return and_(agg.c.last_at.is_not(None), _two_valued(agg.c.last_at < self.since(days)))

    def viewed(self, c: ViewedProductCondition) -> ColumnElement[bool]:
        view = [StoreEvent.contact_id == Contact.id, StoreEvent.type == "product_viewed"]
        if c.product_id is not None:
            view.append(StoreEvent.product_id == c.product_id)
        if c.within_days is not None:
            view.append(StoreEvent.occurred_at >= self.since(c.within_days))
        return exists().where(*view)

    def property(self, c: PropertyCondition) -> ColumnElement[bool]:
        column = Contact.properties
        if c.op == "exists":
            return _two_valued(_JsonPresent(column, c.name))
        value: Any = c.value
        if not isinstance(value, str | bool):
            value = literal(float(value), Float())  # compared as DOUBLE PRECISION, any size
        typed = (
            _JsonBoolean(column, c.name)
            if isinstance(value, bool)
            else _JsonText(column, c.name)
            if isinstance(value, str)
            else _JsonNumber(column, c.name)
        )
        if c.op == "ne":
            return not_(_two_valued(_compare(typed, "eq", value)))
        return _two_valued(_compare(typed, c.op, value))

    def consent(self, c: ConsentCondition) -> ColumnElement[bool]:
        in_state = Contact.consent.in_([str(s) for s in c.in_])
        if c.within_days is None:
            return in_state
        return and_(
            in_state,
            Contact.consent_updated_at.is_not(None),
            _two_valued(Contact.consent_updated_at >= self.since(c.within_days)),
        )

    def engaged(self, days: int, kinds: list[Literal["open", "click"]]) -> ColumnElement[bool]:
        return exists().where(
            MessageEvent.contact_id == Contact.id,
            MessageEvent.kind.in_(kinds),
            MessageEvent.machine.is_(False),
            func.coalesce(MessageEvent.last_at, MessageEvent.at) >= self.since(days),
        )

    def cart_open(self, days: int) -> ColumnElement[bool]:
        cart = aliased(Cart)
        line = aliased(CartLine)
        for_cart, since_cart = aliased(Order), aliased(Order)
        return exists().where(
            cart.contact_id == Contact.id,
            cart.updated_at >= self.since(days),
            exists().where(line.cart_token == cart.token),
            ~exists().where(for_cart.cart_token == cart.token),
            ~exists().where(
                since_cart.contact_id == cart.contact_id,
                since_cart.placed_at >= cart.updated_at,
            ),
        )

    def created(self, c: CreatedCondition) -> ColumnElement[bool]:
        if c.within_days is not None:
            return Contact.created_at >= self.since(c.within_days)
        assert c.older_than_days is not None
        return Contact.created_at < self.since(c.older_than_days)

    def scored(self, c: RfmCondition) -> ColumnElement[bool]:
        rfm = self.rfm()
        parts: list[ColumnElement[bool]] = [rfm.c.contact_id.is_not(None)]
        for name in ("recency", "frequency", "monetary"):
            bounds = getattr(c, name)
            if bounds is not None:
                parts.append(_two_valued(_in_range(rfm.c[name], bounds)))
        return and_(*parts)

    def select(self, condition: Condition) -> Select[Any]:
        where = self.condition(condition)  # registers the derived tables it needs
        source: Any = Contact.__table__
        for derived in self.joins.values():
            source = source.outerjoin(derived, derived.c.contact_id == Contact.id)
        query = select(Contact.id).select_from(source).where(where)
        if self.contact_id is not None:
            query = query.where(Contact.id == self.contact())
        return query


def compile_segment(
    condition: Condition, now: datetime, contact_id: int | None = None
) -> Select[Any]:
    """`SELECT contacts.id` of the members of `condition` at `now`, or of that one contact."""
    return _Compiler(now, contact_id).select(condition)
