"""Store events: the public contract of `POST /v1/events`.

An event is an envelope (`id`, `type`, `occurred_at`, `contact`) plus a body that depends on its
type, validated as a pydantic discriminated union on `type`. Money is a decimal string, never a
float, so no amount is ever rounded on the way in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    HttpUrl,
    IPvAnyAddress,
    TypeAdapter,
    WithJsonSchema,
)

from nudge.events import hygiene

MAX_BATCH = 500


def _no_float(value: Any) -> Any:
    # A JSON number would already have been through binary floating point: refuse it.
    if isinstance(value, float):
        raise ValueError('money must be a decimal string such as "49.00", not a number')
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {value!r} (e.g. 'Europe/Lisbon')") from None
    return value


def _one_line(value: str) -> str:
    # Names end up in email headers: a CR/LF must never be able to start a new header.
    return " ".join(value.split())


Money = Annotated[
    Decimal,
    BeforeValidator(_no_float),
    Field(ge=0, max_digits=12, decimal_places=2),
    WithJsonSchema({"type": "string", "pattern": r"^\d{1,10}(\.\d{1,2})?$", "examples": ["49.00"]}),
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")]
_http_url = TypeAdapter(HttpUrl)


def _url(value: str) -> str:
    _http_url.validate_python(value)
    return value


Url = Annotated[
    str, Field(max_length=2048, json_schema_extra={"format": "uri"}), AfterValidator(_url)
]
# Tokens and ids are part of Temporal workflow ids, so keep them to a safe alphabet.
Token = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
Name = Annotated[str, Field(max_length=100), AfterValidator(_one_line)]
Category = Annotated[
    str, Field(min_length=1, max_length=100, description="The product's category, e.g. shirts")
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)


Locale = Annotated[
    str,
    Field(
        max_length=16,
        pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
        description="BCP 47 language tag, e.g. pt-PT",
    ),
]
PropertyName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
PropertyValue = (
    Annotated[str, Field(max_length=500)]
    | bool
    | Annotated[int, Field(ge=-(2**53), le=2**53)]
    | Annotated[float, Field(allow_inf_nan=False)]
)
TagName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
MAX_PROPERTIES = 50
MAX_TAGS = 50


class ContactIn(_Model):
    # Syntax checked without DNS; role and reserved addresses refused (nudge/events/hygiene.py).
    email: Annotated[EmailStr, AfterValidator(hygiene.check_address)]
    first_name: Name | None = None
    last_name: Name | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] | None = None
    locale: Locale | None = None
    properties: (
        Annotated[
            dict[PropertyName, PropertyValue],
            Field(
                max_length=MAX_PROPERTIES,
                description='Merged key by key into what is known (e.g. {"birthday": "1990-04-02"})',
            ),
        ]
        | None
    ) = None
    tags: (
        Annotated[
            list[TagName],
            Field(max_length=MAX_TAGS, description="Added to the contact's tags; never removed"),
        ]
        | None
    ) = None


class CartLineIn(_Model):
    product_id: Token
    title: Annotated[str, Field(min_length=1, max_length=300)]
    price: Money
    quantity: Annotated[int, Field(ge=1, le=10_000)]
    image_url: Url | None = None
    url: Url | None = None
    category: Category | None = None


class CartIn(_Model):
    token: Token
    currency: Currency
    checkout_url: Url | None = None
    lines: Annotated[list[CartLineIn], Field(max_length=500)]


class OrderLineIn(_Model):
    product_id: Token
    title: Annotated[str, Field(min_length=1, max_length=300)]
    price: Money
    quantity: Annotated[int, Field(ge=1, le=10_000)]
    category: Category | None = None


class OrderIn(_Model):
    id: Token
    cart_token: Token | None = None
    currency: Currency
    total: Money
    lines: Annotated[list[OrderLineIn], Field(max_length=500)] = []
    discount_code: (
        Annotated[
            str,
            Field(min_length=1, max_length=64, description="The discount code the customer used"),
        ]
        | None
    ) = None


class ShipmentIn(_Model):
    id: Token = Field(description="The order's id")
    tracking_url: Url | None = None
    carrier: Annotated[str, Field(max_length=100)] | None = None


class RefundIn(_Model):
    id: Token = Field(description="The order's id")
    amount: Money | None = None


class ProductIn(_Model):
    id: Token
    title: Annotated[str, Field(min_length=1, max_length=300)]
    url: Url | None = None
    image_url: Url | None = None
    price: Money | None = None
    currency: Currency | None = None
    in_stock: bool = True
    category: Category | None = None


class _Envelope(_Model):
    id: Annotated[str, Field(min_length=1, max_length=128)]
    occurred_at: AwareDatetime
    contact: ContactIn


class CustomerSubscribed(_Envelope):
    type: Literal["customer_subscribed"]
    source: Annotated[str, Field(max_length=100)] | None = None
    # Where the subscription came from, kept as proof of consent (consent_records).
    ip: IPvAnyAddress | None = None


class CustomerUnsubscribed(_Envelope):
    type: Literal["customer_unsubscribed"]


class ProductViewed(_Envelope):
    type: Literal["product_viewed"]
    product: ProductIn


class BackInStockRequested(_Envelope):
    """The contact asked to be told when an out-of-stock product is back (`back_in_stock`)."""

    type: Literal["back_in_stock_requested"]
    product: ProductIn


class CartUpdated(_Envelope):
    type: Literal["cart_updated"]
    cart: CartIn


class CheckoutStarted(_Envelope):
    type: Literal["checkout_started"]
    cart: CartIn


class OrderPlaced(_Envelope):
    type: Literal["order_placed"]
    order: OrderIn


class OrderShipped(_Envelope):
    type: Literal["order_shipped"]
    order: ShipmentIn


class OrderRefunded(_Envelope):
    type: Literal["order_refunded"]
    order: RefundIn


# ---- internal events: raised by Nudge itself, never accepted from a store ----------------------


class TierChangeIn(_Model):
    old: Annotated[str, Field(max_length=32)]
    new: Annotated[str, Field(max_length=32)]


class LoyaltyTierChanged(_Envelope):
    """A contact's loyalty tier changed (an order or a refund moved their lifetime spend).
    Flows trigger on it like on a store event; its id derives from the event that caused it."""

    type: Literal["loyalty_tier_changed"]
    loyalty: TierChangeIn


class PriceChangeIn(_Model):
    old: Money
    new: Money


class BackInStock(_Envelope):
    """A product the contact asked about or viewed is in stock again (`POST /v1/products`)."""

    type: Literal["back_in_stock"]
    product: ProductIn


class PriceDropped(_Envelope):
    """A product the contact viewed got cheaper (`POST /v1/products`); `product` has the new
    price, `price` the old and the new."""

    type: Literal["price_dropped"]
    product: ProductIn
    price: PriceChangeIn


PublicEventIn = Annotated[
    CustomerSubscribed
    | CustomerUnsubscribed
    | ProductViewed
    | BackInStockRequested
    | CartUpdated
    | CheckoutStarted
    | OrderPlaced
    | OrderShipped
    | OrderRefunded,
    Field(discriminator="type"),
]
# Every event that is stored and routed to journeys: what stores post, and internal events.
StoreEventIn = Annotated[
    CustomerSubscribed
    | CustomerUnsubscribed
    | ProductViewed
    | BackInStockRequested
    | CartUpdated
    | CheckoutStarted
    | OrderPlaced
    | OrderShipped
    | OrderRefunded
    | LoyaltyTierChanged
    | BackInStock
    | PriceDropped,
    Field(discriminator="type"),
]
INTERNAL_EVENT_TYPES: tuple[str, ...] = ("loyalty_tier_changed", "back_in_stock", "price_dropped")
EVENT_TYPES: tuple[str, ...] = (
    "customer_subscribed",
    "customer_unsubscribed",
    "product_viewed",
    "back_in_stock_requested",
    "cart_updated",
    "checkout_started",
    "order_placed",
    "order_shipped",
    "order_refunded",
)

# What `POST /v1/events` accepts (and publishes as its schema): store events only.
event_adapter: TypeAdapter[StoreEventIn] = TypeAdapter(PublicEventIn)
batch_adapter: TypeAdapter[Sequence[StoreEventIn]] = TypeAdapter(
    Annotated[list[PublicEventIn], Field(min_length=1, max_length=MAX_BATCH)]
)
# Any stored event, internal ones included (reading back the `events` table).
stored_event_adapter: TypeAdapter[StoreEventIn] = TypeAdapter(StoreEventIn)


def cart_of(event: StoreEventIn) -> CartIn | None:
    return event.cart if isinstance(event, CartUpdated | CheckoutStarted) else None


def product_of(event: StoreEventIn) -> ProductIn | None:
    """The product an event is about (a view, a stock request, a restock, a price drop)."""
    if isinstance(event, ProductViewed | BackInStockRequested | BackInStock | PriceDropped):
        return event.product
    return None


def occurred(event: StoreEventIn) -> datetime:
    return event.occurred_at


__all__ = [
    "EVENT_TYPES",
    "INTERNAL_EVENT_TYPES",
    "MAX_BATCH",
    "MAX_PROPERTIES",
    "MAX_TAGS",
    "BackInStock",
    "BackInStockRequested",
    "CartIn",
    "CartLineIn",
    "CartUpdated",
    "Category",
    "CheckoutStarted",
    "ContactIn",
    "Currency",
    "CustomerSubscribed",
    "CustomerUnsubscribed",
    "Locale",
    "LoyaltyTierChanged",
    "Money",
    "Name",
    "OrderIn",
    "OrderLineIn",
    "OrderPlaced",
    "OrderRefunded",
    "OrderShipped",
    "PriceChangeIn",
    "PriceDropped",
    "ProductIn",
    "ProductViewed",
    "PropertyName",
    "PropertyValue",
    "PublicEventIn",
    "RefundIn",
    "ShipmentIn",
    "StoreEventIn",
    "TagName",
    "TierChangeIn",
    "Token",
    "Url",
    "batch_adapter",
    "cart_of",
    "event_adapter",
    "occurred",
    "product_of",
    "stored_event_adapter",
]
