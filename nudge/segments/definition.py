"""A segment definition as data: a tree of conditions, the public JSON contract.

    {"any": [{"kind": "orders", "count": {"gte": 3}},
             {"kind": "orders", "total": {"gte": "500"}}]}

Conditions are a pydantic discriminated union (`Condition`): `all`, `any` and `not` combine
them, every other condition has a `kind`. A whole definition (`SegmentDefinition`,
`BoundedCondition`) is bounded in size and depth. `validation_errors` names each error by its
path in the tree as a user wrote it; `is_time_based` says whether membership can change with the
clock alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from nudge.events.schemas import Money, PropertyValue
from nudge.storage.models import Consent

MAX_CONDITIONS = 100
MAX_DEPTH = 8
SEGMENT_ID = r"^[a-z][a-z0-9_]{0,63}$"
PROPERTY_NAME = r"^[a-z][a-z0-9_]{0,63}$"
TAG = r"^[a-z0-9][a-z0-9_-]{0,63}$"

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


def _bounded_as_given(data: Any) -> Any:
    """The limits checked on the data as given, before any condition is validated: a body of
    125,000 leaves is refused after counting 101 of them, not after validating them all."""
    conditions, todo = 0, [(data, 1)]
    while todo:
        node, depth = todo.pop()
        if not isinstance(node, dict):
            continue
        conditions += 1
        if conditions > MAX_CONDITIONS:
            raise ValueError(f"a definition has at most {MAX_CONDITIONS} conditions")
        if depth > MAX_DEPTH:
            raise ValueError(f"conditions nest at most {MAX_DEPTH} deep")
        for key in ("all", "any"):
            if isinstance(node.get(key), list):
                todo.extend((child, depth + 1) for child in node[key])
        if "not" in node:
            todo.append((node["not"], depth + 1))
    return data


BoundedCondition = Annotated[
    Condition,
    BeforeValidator(_bounded_as_given),
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
