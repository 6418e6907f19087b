"""Segments: definitions as data, one SQL query per segment, membership that moves.

A definition is a tree of conditions (a pydantic discriminated union, the public JSON contract):

    {"any": [{"kind": "orders", "count": {"gte": 3}},
             {"kind": "orders", "total": {"gte": "500"}}]}

`compile_segment` turns a definition into ONE SQLAlchemy Core `SELECT contacts.id ...` that runs
on SQLite and PostgreSQL alike: per-contact aggregates (order count and spend, last order time,
emails received) are LEFT JOINed derived tables, one per distinct time window; existence checks
(tags, product views, opens and clicks, open carts) are correlated EXISTS. Every leaf compiles to
a two-valued expression, so `not` never meets a NULL. `now` is a parameter, so the same
definition evaluates the same way in a test and in production; restricted to one contact (the
aggregates filtered by that contact too) it is a handful of index lookups.

Membership is stored in `segment_members`, and every entry and exit in `segment_changes` with its
time. It moves when an event about a contact arrives (`refresh_contact`: one UNION ALL query over
every segment for that one contact), and on a schedule for segments whose membership changes with
the clock alone (`refresh_time_based`: set-based, INSERT ... SELECT and DELETE ... WHERE NOT
EXISTS). Entries into segments that a flow declares in `segment_triggers` are left unrouted
(`routed_at` NULL) until a journey has been started for them, an outbox that survives crashes.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    ColumnElement,
    Float,
    FunctionElement,
    Integer,
    MetaData,
    Select,
    String,
    Subquery,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable
from sqlalchemy.sql.visitors import traverse

from nudge.events.schemas import Money, PropertyValue
from nudge.storage.models import (
    Cart,
    CartLine,
    Consent,
    Contact,
    ContactTag,
    Message,
    MessageEvent,
    MessageStatus,
    Order,
    Segment,
    SegmentChange,
    SegmentMember,
    StoreEvent,
    UTCDateTime,
)

MAX_CONDITIONS = 100
MAX_DEPTH = 8
SEGMENT_ID = r"^[a-z][a-z0-9_]{0,63}$"
PROPERTY_NAME = r"^[a-z][a-z0-9_]{0,63}$"
TAG = r"^[a-z0-9][a-z0-9_-]{0,63}$"
REFUNDED = "refunded"

# ---- the definition model (the public contract) --------------------------------------------

Days = Annotated[int, Field(ge=1, le=36_500, description="A whole number of days")]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]
Score = Annotated[int, Field(ge=1, le=5)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Range(_Strict):
    """Bounds on a number; every bound given must hold (`{"gte": 3, "lt": 10}`)."""

    @model_validator(mode="after")
    def _some_bound(self) -> _Range:
        if all(getattr(self, name) is None for name in ("gt", "gte", "lt", "lte", "eq")):
            raise ValueError("give at least one of gt, gte, lt, lte, eq")
        return self

    def bounds(self) -> list[tuple[str, Any]]:
        return [
            (name, value)
            for name in ("gt", "gte", "lt", "lte", "eq")
            if (value := getattr(self, name)) is not None
        ]


class CountRange(_Range):
    gt: Count | None = None
    gte: Count | None = None
    lt: Count | None = None
    lte: Count | None = None
    eq: Count | None = None


class MoneyRange(_Range):
    """Money bounds as decimal strings (`{"gt": "500"}`), like every amount in Nudge."""

    gt: Money | None = None
    gte: Money | None = None
    lt: Money | None = None
    lte: Money | None = None
    eq: Money | None = None


class ScoreRange(_Range):
    gt: Score | None = None
    gte: Score | None = None
    lt: Score | None = None
    lte: Score | None = None
    eq: Score | None = None


class OrdersCondition(_Strict):
    """Orders placed (refunded ones excluded): how many, how much in total, optionally only
    those in the last `within_days`. `{"count": {"eq": 0}, "within_days": 60}` is "no order
    in 60 days", never-buyers included."""

    kind: Literal["orders"]
    count: CountRange | None = None
    total: MoneyRange | None = None
    within_days: Days | None = None

    @model_validator(mode="after")
    def _something(self) -> OrdersCondition:
        if self.count is None and self.total is None:
            raise ValueError("give `count`, `total` or both")
        return self


class LastOrderCondition(_Strict):
    """Has ordered, and the most recent (non-refunded) order is older than `older_than_days`."""

    kind: Literal["last_order"]
    older_than_days: Days


class ViewedProductCondition(_Strict):
    """Viewed a product (`product_viewed` events): this one, or any if `product_id` is left out."""

    kind: Literal["viewed_product"]
    product_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    within_days: Days | None = None


class PropertyCondition(_Strict):
    """A profile property. `eq`/`ne` compare strings, numbers or booleans by type; `gt`, `gte`,
    `lt`, `lte` compare numbers, or strings in text order (ISO dates sort right); `exists`
    takes no value. `ne` holds when the property is missing too."""

    kind: Literal["property"]
    name: Annotated[str, Field(pattern=PROPERTY_NAME)]
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "exists"]
    value: PropertyValue | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> PropertyCondition:
        if self.op == "exists":
            if self.value is not None:
                raise ValueError("`exists` takes no value")
        elif self.value is None:
            raise ValueError(f"`{self.op}` needs a value")
        elif isinstance(self.value, bool) and self.op not in ("eq", "ne"):
            raise ValueError(f"a boolean can only be compared with eq or ne, not {self.op}")
        return self


class TagCondition(_Strict):
    kind: Literal["tag"]
    tag: Annotated[str, Field(pattern=TAG)]


class ConsentCondition(_Strict):
    """Consent is one of `in`; with `within_days`, it was set to that in the last N days."""

    kind: Literal["consent"]
    in_: Annotated[list[Consent], Field(alias="in", min_length=1)]
    within_days: Days | None = None


class EngagementCondition(_Strict):
    """A human open or click (privacy-proxy and scanner events excluded) in the last N days."""

    kind: Literal["engagement"]
    within_days: Days
    kinds: Annotated[list[Literal["open", "click"]], Field(min_length=1)] = ["open", "click"]


class EmailsReceivedCondition(_Strict):
    """Marketing emails delivered (`sent` in the message log), optionally in the last N days."""

    kind: Literal["emails_received"]
    count: CountRange
    within_days: Days | None = None


class CartOpenCondition(_Strict):
    """A cart with items, touched in the last N days, with no order for it nor any order by the
    contact since it was last touched."""

    kind: Literal["cart_open"]
    within_days: Days


class CreatedCondition(_Strict):
    """When Nudge first heard of the contact: in the last N days, or more than N days ago."""

    kind: Literal["created"]
    within_days: Days | None = None
    older_than_days: Days | None = None

    @model_validator(mode="after")
    def _one(self) -> CreatedCondition:
        if (self.within_days is None) == (self.older_than_days is None):
            raise ValueError("give exactly one of `within_days`, `older_than_days`")
        return self


class RfmCondition(_Strict):
    """RFM scores (1-5 each, see `rfm_scores`). Relative to every other buyer, so a segment
    using it is refreshed by the schedule, not per event."""

    kind: Literal["rfm"]
    recency: ScoreRange | None = None
    frequency: ScoreRange | None = None
    monetary: ScoreRange | None = None

    @model_validator(mode="after")
    def _something(self) -> RfmCondition:
        if self.recency is None and self.frequency is None and self.monetary is None:
            raise ValueError("give at least one of `recency`, `frequency`, `monetary`")
        return self


class AllOf(_Strict):
    TAG: ClassVar[str] = "all"
    all_: Annotated[list[Condition], Field(alias="all", min_length=1, max_length=50)]


class AnyOf(_Strict):
    TAG: ClassVar[str] = "any"
    any_: Annotated[list[Condition], Field(alias="any", min_length=1, max_length=50)]


class NotOf(_Strict):
    TAG: ClassVar[str] = "not"
    not_: Condition = Field(alias="not")


Leaf = (
    OrdersCondition
    | LastOrderCondition
    | ViewedProductCondition
    | PropertyCondition
    | TagCondition
    | ConsentCondition
    | EngagementCondition
    | EmailsReceivedCondition
    | CartOpenCondition
    | CreatedCondition
    | RfmCondition
)
LEAVES: tuple[type[Leaf], ...] = (
    OrdersCondition,
    LastOrderCondition,
    ViewedProductCondition,
    PropertyCondition,
    TagCondition,
    ConsentCondition,
    EngagementCondition,
    EmailsReceivedCondition,
    CartOpenCondition,
    CreatedCondition,
    RfmCondition,
)
KINDS: tuple[str, ...] = tuple(get_args(leaf.model_fields["kind"].annotation)[0] for leaf in LEAVES)
COMBINATORS = ("all", "any", "not")


def _tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "kind" in value:
            kind = value["kind"]
            return kind if isinstance(kind, str) and kind in KINDS else None
        keys = [key for key in COMBINATORS if key in value]
        return keys[0] if len(keys) == 1 else None
    if isinstance(value, AllOf | AnyOf | NotOf):
        return value.TAG
    kind = getattr(value, "kind", None)
    return kind if isinstance(kind, str) else None


Condition = Annotated[
    Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")]
    | Annotated[OrdersCondition, Tag("orders")]
    | Annotated[LastOrderCondition, Tag("last_order")]
    | Annotated[ViewedProductCondition, Tag("viewed_product")]
    | Annotated[PropertyCondition, Tag("property")]
    | Annotated[TagCondition, Tag("tag")]
    | Annotated[ConsentCondition, Tag("consent")]
    | Annotated[EngagementCondition, Tag("engagement")]
    | Annotated[EmailsReceivedCondition, Tag("emails_received")]
    | Annotated[CartOpenCondition, Tag("cart_open")]
    | Annotated[CreatedCondition, Tag("created")]
    | Annotated[RfmCondition, Tag("rfm")],
    Discriminator(
        _tag,
        custom_error_type="invalid_condition",
        custom_error_message=(
            "a condition is {'all': [...]}, {'any': [...]}, {'not': {...}} or has a `kind` "
            "among: " + ", ".join(KINDS)
        ),
    ),
]

for _model in (AllOf, AnyOf, NotOf):
    _model.model_rebuild()


def _children(condition: Condition) -> list[Condition]:
    match condition:
        case AllOf(all_=children) | AnyOf(any_=children):
            return list(children)
        case NotOf(not_=child):
            return [child]
    return []


def walk(condition: Condition) -> Iterable[Condition]:
    yield condition
    for child in _children(condition):
        yield from walk(child)


def _depth(condition: Condition) -> int:
    return 1 + max((_depth(c) for c in _children(condition)), default=0)


def _bounded(condition: Condition) -> Condition:
    if sum(1 for _ in walk(condition)) > MAX_CONDITIONS:
        raise ValueError(f"a definition has at most {MAX_CONDITIONS} conditions")
    if _depth(condition) > MAX_DEPTH:
        raise ValueError(f"conditions nest at most {MAX_DEPTH} deep")
    return condition


BoundedCondition = Annotated[
    Condition,
    AfterValidator(_bounded),
    Field(description=f"A condition tree: at most {MAX_CONDITIONS} conditions, {MAX_DEPTH} deep"),
]


class SegmentDefinition(_Strict):
    """A whole definition: a condition tree, bounded in size and depth."""

    definition: BoundedCondition


condition_adapter: TypeAdapter[Condition] = TypeAdapter(Condition)


def parse(data: Any) -> Condition:
    """A stored or posted definition as a condition tree (raises pydantic's ValidationError)."""
    return SegmentDefinition.model_validate({"definition": data}).definition


def dump(condition: Condition) -> dict[str, Any]:
    data: dict[str, Any] = condition_adapter.dump_python(
        condition, mode="json", by_alias=True, exclude_none=True
    )
    return data


def uses_rfm(condition: Condition) -> bool:
    return any(isinstance(c, RfmCondition) for c in walk(condition))


def is_time_based(condition: Condition) -> bool:
    """Whether membership can change with the clock alone (or relative to other contacts, as
    RFM does): such segments are refreshed on the schedule as well as per event."""
    for c in walk(condition):
        match c:
            case (
                LastOrderCondition()
                | EngagementCondition()
                | CartOpenCondition()
                | CreatedCondition()
                | RfmCondition()
            ):
                return True
            case (
                OrdersCondition(within_days=int())
                | ViewedProductCondition(within_days=int())
                | ConsentCondition(within_days=int())
                | EmailsReceivedCondition(within_days=int())
            ):
                return True
    return False


def error_field(loc: Sequence[int | str], error_type: str, given: Any = None) -> str:
    """The path of a validation error inside a condition tree, as a user wrote it.

    Pydantic puts the discriminator's tag in the location (`all.all.1.orders.count`); the
    definition reads `all.1.count`, so the tags are dropped. An unknown kind points at `kind`.
    """
    parts = [str(p) for p in loc]
    out: list[str] = []
    i = 0
    while i < len(parts):
        tag = parts[i]
        i += 1
        if tag in ("all", "any"):
            out += parts[i : i + 2]  # the list, then the index of a child condition
            i += 2
        elif tag == "not":
            out += parts[i : i + 1]
            i += 1
        else:
            out += parts[i:]
            break
    if error_type == "invalid_condition" and isinstance(given, dict) and "kind" in given:
        out.append("kind")
    return ".".join(out)


def validation_errors(err: ValidationError, prefix: str = "definition") -> list[dict[str, str]]:
    """`[{"field": "definition.all.1.count", "message": ...}]` for each error in a definition
    validated as `{prefix: ...}` (the API's body shape)."""
    fields = []
    for item in err.errors():
        loc = tuple(item.get("loc", ()))
        error_type = str(item.get("type", ""))
        message = "field required" if error_type == "missing" else str(item.get("msg", "invalid"))
        if loc[:1] == (prefix,):
            inner = error_field(loc[1:], error_type, item.get("input"))
            name = f"{prefix}.{inner}" if inner else prefix
        else:
            name = ".".join(str(p) for p in loc) or "body"
        fields.append({"field": name, "message": message})
    return fields


# ---- SQL building blocks that differ between SQLite and PostgreSQL -------------------------


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
    expr: ColumnElement[Any], bounds: _Range, convert: Any = lambda v: v
) -> ColumnElement[bool]:
    return and_(*(_compare(expr, op, convert(v)) for op, v in bounds.bounds()))


def _cents(amount: Decimal) -> BindParameter[int]:
    # BIGINT: a 12-digit amount in cents does not fit a 32-bit parameter.
    return literal(int(amount * 100), BigInteger())


# ---- the compiler --------------------------------------------------------------------------


class _Compiler:
    def __init__(self, now: datetime, contact_id: int | None) -> None:
        if now.tzinfo is None:
            raise ValueError("`now` must be timezone-aware")
        self.now, self.contact_id = now, contact_id
        self.joins: dict[Hashable, Subquery] = {}

    # The clock and the contact are named parameters (`since_30`, `contact_id`), so that one
    # built statement serves every contact at every time (see `evaluate_contact`).

    def since(self, days: int) -> BindParameter[datetime]:
        return bindparam(f"since_{days}", self.now - timedelta(days=days), type_=UTCDateTime())

    def contact(self) -> BindParameter[int]:
        return bindparam("contact_id", self.contact_id, type_=BigInteger())

    def _only_contact(self, column: Any) -> list[ColumnElement[bool]]:
        return [column == self.contact()] if self.contact_id is not None else []

    # Per-contact aggregates, one derived table per (source, window), shared by conditions.

    def orders(self, within_days: int | None) -> Subquery:
        key = ("orders", within_days)
        if key not in self.joins:
            conditions = [Order.status != REFUNDED, *self._only_contact(Order.contact_id)]
            if within_days is not None:
                conditions.append(Order.placed_at >= self.since(within_days))
            self.joins[key] = (
                select(
                    Order.contact_id.label("contact_id"),
                    func.count().label("orders"),
                    func.sum(_Cents(Order.total)).label("cents"),
                    func.max(Order.placed_at).label("last_at"),
                )
                .where(*conditions)
                .group_by(Order.contact_id)
                .subquery(f"orders_{within_days or 'all'}")
            )
        return self.joins[key]

    def emails(self, within_days: int | None) -> Subquery:
        key = ("emails", within_days)
        if key not in self.joins:
            conditions = [
                Message.status == MessageStatus.SENT,
                *self._only_contact(Message.contact_id),
            ]
            if within_days is not None:
                conditions.append(Message.sent_at >= self.since(within_days))
            self.joins[key] = (
                select(Message.contact_id.label("contact_id"), func.count().label("emails"))
                .where(*conditions)
                .group_by(Message.contact_id)
                .subquery(f"emails_{within_days or 'all'}")
            )
        return self.joins[key]

    def rfm(self) -> Subquery:
        # Ranked over every buyer: a score is relative, so it is never restricted to one contact.
        key = ("rfm",)
        if key not in self.joins:
            self.joins[key] = rfm_query().subquery("rfm")
        return self.joins[key]

    # Conditions.

    def condition(self, c: Condition) -> ColumnElement[bool]:
        match c:
            case AllOf(all_=children):
                return and_(*(self.condition(child) for child in children))
            case AnyOf(any_=children):
                return or_(*(self.condition(child) for child in children))
            case NotOf(not_=child):
                return not_(self.condition(child))
            case OrdersCondition():
                agg = self.orders(c.within_days)
                parts = []
                if c.count is not None:
                    parts.append(_in_range(func.coalesce(agg.c.orders, 0), c.count))
                if c.total is not None:
                    parts.append(_in_range(func.coalesce(agg.c.cents, 0), c.total, _cents))
                return and_(*parts)
            case LastOrderCondition(older_than_days=days):
                agg = self.orders(None)
                return and_(
                    agg.c.last_at.is_not(None),
                    _two_valued(agg.c.last_at < self.since(days)),
                )
            case ViewedProductCondition():
                view = [
                    StoreEvent.contact_id == Contact.id,
                    StoreEvent.type == "product_viewed",
                ]
                if c.product_id is not None:
                    view.append(StoreEvent.product_id == c.product_id)
                if c.within_days is not None:
                    view.append(StoreEvent.occurred_at >= self.since(c.within_days))
                return exists().where(*view)
            case PropertyCondition():
                return self.property(c)
            case TagCondition(tag=tag):
                return exists().where(ContactTag.contact_id == Contact.id, ContactTag.tag == tag)
            case ConsentCondition(in_=states, within_days=days):
                in_state = Contact.consent.in_([str(s) for s in states])
                if days is None:
                    return in_state
                return and_(
                    in_state,
                    Contact.consent_updated_at.is_not(None),
                    _two_valued(Contact.consent_updated_at >= self.since(days)),
                )
            case EngagementCondition(within_days=days, kinds=kinds):
                return exists().where(
                    MessageEvent.contact_id == Contact.id,
                    MessageEvent.kind.in_(kinds),
                    MessageEvent.machine.is_(False),
                    MessageEvent.at >= self.since(days),
                )
            case EmailsReceivedCondition(count=count, within_days=days):
                return _in_range(func.coalesce(self.emails(days).c.emails, 0), count)
            case CartOpenCondition(within_days=days):
                return self.cart_open(days)
            case CreatedCondition(within_days=within, older_than_days=older):
                if within is not None:
                    return Contact.created_at >= self.since(within)
                assert older is not None
                return Contact.created_at < self.since(older)
            case RfmCondition():
                rfm = self.rfm()
                parts = [rfm.c.contact_id.is_not(None)]
                for name in ("recency", "frequency", "monetary"):
                    bounds = getattr(c, name)
                    if bounds is not None:
                        parts.append(_two_valued(_in_range(rfm.c[name], bounds)))
                return and_(*parts)
        raise TypeError(f"not a condition: {c!r}")  # pragma: no cover

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
    buyers = (
        select(
            Order.contact_id.label("contact_id"),
            func.count().label("orders"),
            func.sum(_Cents(Order.total)).label("cents"),
            func.max(Order.placed_at).label("last_at"),
        )
        .where(Order.status != REFUNDED)
        .group_by(Order.contact_id)
        .subquery("buyers")
    )
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


# ---- built-in segments ---------------------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    id: str
    name: str
    definition: Mapping[str, Any]


VIP_ORDERS = 3
VIP_SPEND = "500.00"
NEW_SUBSCRIBER_DAYS = 14

BUILTINS: tuple[Builtin, ...] = (
    Builtin(
        "vip",
        f"VIP: {VIP_ORDERS}+ orders or {VIP_SPEND} spent",
        {
            "any": [
                {"kind": "orders", "count": {"gte": VIP_ORDERS}},
                {"kind": "orders", "total": {"gte": VIP_SPEND}},
            ]
        },
    ),
    Builtin("one_time_buyers", "One-time buyers", {"kind": "orders", "count": {"eq": 1}}),
    Builtin("repeat_buyers", "Repeat buyers", {"kind": "orders", "count": {"gte": 2}}),
    Builtin(
        "cart_abandoners",
        "Cart abandoners: an open cart in the last 7 days",
        {"kind": "cart_open", "within_days": 7},
    ),
    *(
        Builtin(
            f"lapsed_{days}",
            f"Lapsed {days} days: last order over {days} days ago",
            {"kind": "last_order", "older_than_days": days},
        )
        for days in (30, 60, 90)
    ),
    Builtin(
        "engaged_30",
        "Engaged: opened or clicked in the last 30 days",
        {"kind": "engagement", "within_days": 30},
    ),
    Builtin(
        "unengaged_180",
        "Unengaged 180 days: known for 180+ days, mailed, no open or click in 180 days",
        {
            "all": [
                {"kind": "created", "older_than_days": 180},
                {"kind": "emails_received", "count": {"gte": 1}, "within_days": 180},
                {"not": {"kind": "engagement", "within_days": 180}},
            ]
        },
    ),
    Builtin(
        "new_subscribers",
        f"New subscribers: subscribed in the last {NEW_SUBSCRIBER_DAYS} days",
        {"kind": "consent", "in": ["subscribed"], "within_days": NEW_SUBSCRIBER_DAYS},
    ),
)
BUILTIN_IDS = frozenset(b.id for b in BUILTINS)


# ---- membership ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MembershipChange:
    segment_id: str
    contact_id: int
    change: Literal["entered", "exited"]
    change_id: int
    at: datetime


@dataclass
class RefreshCounts:
    entered: int = 0
    exited: int = 0


def _rowcount(result: Any) -> int:
    # DML results are CursorResults; the generic Result type does not declare rowcount.
    return int(result.rowcount)


def _insert(session: AsyncSession, table: Any) -> Any:
    name = session.get_bind().dialect.name
    return (sqlite.insert if name == "sqlite" else postgresql.insert)(table)


_parsed: dict[tuple[str, str], Condition] = {}


def _definition(segment_id: str, data: Mapping[str, Any]) -> Condition:
    # Parsed once per (segment, definition); refresh_contact runs for every event.
    key = (segment_id, repr(sorted(data.items())))
    if key not in _parsed:
        if len(_parsed) > 1000:
            _parsed.clear()
        _parsed[key] = parse(dict(data))
    return _parsed[key]


async def _segments(
    session: AsyncSession, *, time_based: bool | None = None
) -> list[tuple[str, Condition]]:
    query = select(Segment.id, Segment.definition).order_by(Segment.id)
    if time_based is not None:
        query = query.where(Segment.time_based.is_(time_based))
    rows = (await session.execute(query)).all()
    return [(sid, _definition(sid, definition)) for sid, definition in rows]


async def evaluate_contact(
    session: AsyncSession,
    contact_id: int,
    now: datetime,
    segments: Sequence[tuple[str, Condition]],
) -> set[str]:
    """The ids of `segments` the contact belongs to at `now`, in one UNION ALL query (built
    once per set of definitions: only its parameters change from one event to the next)."""
    found: set[str] = set()
    for query, windows in _union_of(segments):
        params = {f"since_{days}": now - timedelta(days=days) for days in windows}
        found.update((await session.scalars(query, params | {"contact_id": contact_id})).all())
    return found


# A statement (one SELECT, or a UNION ALL of them) and the time windows it takes as parameters.
_Built = tuple[Executable, set[int]]
_unions: dict[tuple[int, ...], tuple[Sequence[Any], list[_Built]]] = {}


def _union_of(segments: Sequence[tuple[str, Condition]]) -> list[_Built]:
    # Keyed by the identity of the parsed definitions (cached by `_definition`); the entry
    # holds them, so an id is never reused while its entry lives.
    key = tuple(id(condition) for _, condition in segments)
    if key not in _unions:
        if len(_unions) > 64:
            _unions.clear()
        built: list[_Built] = []
        for start in range(0, len(segments), 200):  # SQLite allows 500 terms in a compound
            chunk = segments[start : start + 200]
            windows: set[int] = set()
            parts = []
            for sid, condition in chunk:
                compiler = _Compiler(_ANY_TIME, 0)
                parts.append(
                    compiler.select(condition).with_only_columns(
                        literal(sid, String()).label("segment_id")
                    )
                )
                windows |= {
                    int(name.removeprefix("since_"))
                    for name in _bind_names(parts[-1])
                    if name.startswith("since_")
                }
            query: Executable = parts[0] if len(parts) == 1 else union_all(*parts)
            built.append((query, windows))
        _unions[key] = (segments, built)
    return _unions[key][1]


_ANY_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def _bind_names(statement: Any) -> set[str]:
    names: set[str] = set()
    traverse(statement, {}, {"bindparam": lambda bind: names.add(bind.key)})
    return names


async def refresh_contact(
    session: AsyncSession,
    contact_id: int,
    now: datetime,
    *,
    triggers: Collection[str] = (),
) -> list[MembershipChange]:
    """Recompute one contact's memberships of every segment (but RFM ones, which only the
    schedule refreshes); store and record what changed. Entries into segments in `triggers`
    are left unrouted, for the caller to start the flows they trigger."""
    segments = [(sid, c) for sid, c in await _segments(session) if not uses_rfm(c)]
    if not segments:
        return []
    member_of = await evaluate_contact(session, contact_id, now, segments)
    evaluated = {sid for sid, _ in segments}
    current = set(
        (
            await session.scalars(
                select(SegmentMember.segment_id).where(SegmentMember.contact_id == contact_id)
            )
        ).all()
    )
    changes: list[MembershipChange] = []
    for sid in sorted((current & evaluated) - member_of):
        gone = await session.execute(
            delete(SegmentMember).where(
                SegmentMember.segment_id == sid, SegmentMember.contact_id == contact_id
            )
        )
        if _rowcount(gone):
            changes.append(await _record(session, sid, contact_id, "exited", now, routed=True))
    for sid in sorted(member_of - current):
        added = await session.execute(
            _insert(session, SegmentMember)
            .values(segment_id=sid, contact_id=contact_id, entered_at=now)
            .on_conflict_do_nothing()
        )
        if _rowcount(added):
            changes.append(
                await _record(session, sid, contact_id, "entered", now, routed=sid not in triggers)
            )
    return changes


async def _record(
    session: AsyncSession,
    segment_id: str,
    contact_id: int,
    change: Literal["entered", "exited"],
    at: datetime,
    *,
    routed: bool,
) -> MembershipChange:
    change_id = await session.scalar(
        insert(SegmentChange)
        .values(
            segment_id=segment_id,
            contact_id=contact_id,
            change=change,
            at=at,
            routed_at=at if routed else None,
        )
        .returning(SegmentChange.id)
    )
    assert change_id is not None
    return MembershipChange(segment_id, contact_id, change, int(change_id), at)


def _temporary(name: str) -> Table:
    return Table(
        name,
        MetaData(),
        Column("contact_id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
        prefixes=["TEMPORARY"],
    )


# The members a refresh computed, and those stored before it.
_staged, _current = _temporary("nudge_segment_staged"), _temporary("nudge_segment_current")


async def refresh_segment(
    session: AsyncSession,
    segment_id: str,
    condition: Condition,
    now: datetime,
    *,
    route_entries: bool = False,
) -> RefreshCounts:
    """Set-based refresh of one segment: its members at `now` and its stored members are staged
    in two temporary tables, then leavers are recorded and deleted, newcomers recorded and
    inserted, all in SQL. Entries stay unrouted only with `route_entries` (a segment's first
    members start no flow).

    No statement both reads `segment_members` and writes it: when its statistics are stale (a
    first computation, say), PostgreSQL may plan an anti-join that rescans the very pages the
    INSERT is appending, which is quadratic. The temporary tables are analysed instead."""
    # Created and dropped inside the caller's transaction: a failure rolls them back with the rest.
    connection = await session.connection()
    for table in (_staged, _current):
        await connection.run_sync(table.create)
    await session.execute(
        insert(_staged).from_select(["contact_id"], compile_segment(condition, now))
    )
    await session.execute(
        insert(_current).from_select(
            ["contact_id"],
            select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment_id),
        )
    )
    if connection.dialect.name == "postgresql":  # no autovacuum on temporary tables
        await session.execute(text(f"ANALYZE {_staged.name}, {_current.name}"))
    staged, current = _staged.c.contact_id, _current.c.contact_id
    stays = exists().where(staged == current)
    stayed = exists().where(current == staged)
    exited = await session.execute(
        insert(SegmentChange).from_select(
            ["segment_id", "contact_id", "change", "at", "routed_at"],
            select(
                literal(segment_id, String()),
                current,
                literal("exited", String()),
                literal(now, UTCDateTime()),
                literal(now, UTCDateTime()),
            ).where(~stays),
        )
    )
    await session.execute(
        delete(SegmentMember).where(
            SegmentMember.segment_id == segment_id,
            ~exists().where(staged == SegmentMember.contact_id),
        ),
        execution_options={"synchronize_session": False},  # no RETURNING of every leaver
    )
    entered = await session.execute(
        insert(SegmentChange).from_select(
            ["segment_id", "contact_id", "change", "at", "routed_at"],
            select(
                literal(segment_id, String()),
                staged,
                literal("entered", String()),
                literal(now, UTCDateTime()),
                literal(None if route_entries else now, UTCDateTime()),
            ).where(~stayed),
        )
    )
    await session.execute(
        _insert(session, SegmentMember)
        .from_select(
            ["segment_id", "contact_id", "entered_at"],
            select(literal(segment_id, String()), staged, literal(now, UTCDateTime())).where(
                ~stayed
            ),
        )
        .on_conflict_do_nothing()
    )
    for table in (_staged, _current):
        await connection.run_sync(table.drop)
    return RefreshCounts(entered=_rowcount(entered), exited=_rowcount(exited))


async def refresh_time_based(
    session: AsyncSession, now: datetime, *, triggers: Collection[str] = ()
) -> dict[str, RefreshCounts]:
    """Refresh every time-based segment (lapsed N days, engaged 30 days, RFM, ...) at `now`."""
    counts = {}
    for sid, condition in await _segments(session, time_based=True):
        counts[sid] = await refresh_segment(
            session, sid, condition, now, route_entries=sid in triggers
        )
    return counts


async def pending_entries(
    session: AsyncSession,
    segment_ids: Collection[str],
    *,
    contact_id: int | None = None,
    limit: int = 500,
) -> list[MembershipChange]:
    """Entries not yet routed to the flows they trigger (oldest first)."""
    if not segment_ids:
        return []
    query = (
        select(SegmentChange)
        .where(
            SegmentChange.routed_at.is_(None),
            SegmentChange.change == "entered",
            SegmentChange.segment_id.in_(list(segment_ids)),
        )
        .order_by(SegmentChange.id)
        .limit(limit)
    )
    if contact_id is not None:
        query = query.where(SegmentChange.contact_id == contact_id)
    return [
        MembershipChange(row.segment_id, row.contact_id, "entered", row.id, row.at)
        for row in await session.scalars(query)
    ]


async def mark_routed(session: AsyncSession, change_ids: Collection[int], at: datetime) -> None:
    if change_ids:
        await session.execute(
            update(SegmentChange).where(SegmentChange.id.in_(list(change_ids))).values(routed_at=at)
        )


async def ensure_builtin_segments(session: AsyncSession, now: datetime) -> list[str]:
    """Store the built-in segments, or update those whose definition changed, and compute the
    members of each one stored or changed (recorded as entries, starting no flow). Idempotent
    and safe to race: the API and the worker both call it at start. Returns the ids touched."""
    stored = {
        sid: (definition, updated_at)
        for sid, definition, updated_at in (
            await session.execute(
                select(Segment.id, Segment.definition, Segment.updated_at).where(
                    Segment.id.in_([b.id for b in BUILTINS])
                )
            )
        ).all()
    }
    touched = []
    for builtin in BUILTINS:
        condition = parse(builtin.definition)
        definition = dump(condition)
        if builtin.id not in stored:
            result = await session.execute(
                _insert(session, Segment)
                .values(
                    id=builtin.id,
                    name=builtin.name,
                    definition=definition,
                    builtin=True,
                    time_based=is_time_based(condition),
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
            )
        elif stored[builtin.id][0] != definition:
            result = await session.execute(
                update(Segment)
                .where(Segment.id == builtin.id, Segment.updated_at == stored[builtin.id][1])
                .values(
                    name=builtin.name,
                    definition=definition,
                    builtin=True,
                    time_based=is_time_based(condition),
                    updated_at=now,
                )
            )
        else:
            continue
        if _rowcount(result):  # the winner of a race computes the members
            await refresh_segment(session, builtin.id, condition, now)
            touched.append(builtin.id)
    return touched


# ---- segments and members, as the API reads and writes them ---------------------------------

SegmentRow = Segment


async def get_segment(session: AsyncSession, segment_id: str) -> Segment | None:
    return await session.get(Segment, segment_id)


async def list_segments(session: AsyncSession) -> list[Segment]:
    return list(await session.scalars(select(Segment).order_by(Segment.id)))


async def create_segment(
    session: AsyncSession, segment_id: str, name: str, condition: Condition, now: datetime
) -> Segment:
    """Store a segment and compute its members (recorded as entries that start no flow)."""
    segment = Segment(
        id=segment_id,
        name=name,
        definition=dump(condition),
        builtin=False,
        time_based=is_time_based(condition),
        created_at=now,
        updated_at=now,
    )
    session.add(segment)
    await session.flush()
    await refresh_segment(session, segment_id, condition, now)
    return segment


async def delete_segment(session: AsyncSession, segment_id: str) -> None:
    # Members go with it (ON DELETE CASCADE); its recorded changes stay, as history.
    await session.execute(delete(SegmentMember).where(SegmentMember.segment_id == segment_id))
    await session.execute(delete(Segment).where(Segment.id == segment_id))


async def member_count(session: AsyncSession, segment_id: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(SegmentMember)
        .where(SegmentMember.segment_id == segment_id)
    )
    return int(count or 0)


async def member_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(SegmentMember.segment_id, func.count()).group_by(SegmentMember.segment_id)
    )
    return {sid: int(count) for sid, count in rows.all()}


@dataclass(frozen=True)
class Member:
    id: int
    email: str
    first_name: str | None
    entered_at: datetime


async def members_page(
    session: AsyncSession, segment_id: str, *, after: int | None, limit: int
) -> list[Member]:
    """Keyset pagination by contact id: stable while members come and go."""
    query = (
        select(Contact.id, Contact.email, Contact.first_name, SegmentMember.entered_at)
        .join(SegmentMember, SegmentMember.contact_id == Contact.id)
        .where(SegmentMember.segment_id == segment_id)
        .order_by(SegmentMember.contact_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(SegmentMember.contact_id > after)
    return [Member(*row) for row in (await session.execute(query)).all()]


async def preview(
    session: AsyncSession, condition: Condition, now: datetime, sample: int
) -> tuple[int, list[Member]]:
    """How many contacts match `condition` at `now`, and the first few by id (nothing stored),
    in one evaluation: the count is a window over every match, taken before the LIMIT."""
    query = (
        compile_segment(condition, now)
        .with_only_columns(
            Contact.id,
            Contact.email,
            Contact.first_name,
            literal(now, UTCDateTime()),
            func.count().over().label("matches"),
        )
        .order_by(Contact.id)
        .limit(sample)
    )
    rows = (await session.execute(query)).all()
    count = int(rows[0][-1]) if rows else 0
    return count, [Member(*row[:-1]) for row in rows]


async def segments_of(session: AsyncSession, contact_id: int) -> list[tuple[str, str, datetime]]:
    rows = await session.execute(
        select(Segment.id, Segment.name, SegmentMember.entered_at)
        .join(SegmentMember, SegmentMember.segment_id == Segment.id)
        .where(SegmentMember.contact_id == contact_id)
        .order_by(Segment.id)
    )
    return [(sid, name, entered_at) for sid, name, entered_at in rows.all()]
