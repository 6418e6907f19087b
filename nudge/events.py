"""Store events: the public contract of `POST /v1/events`.

An event is an envelope (`id`, `type`, `occurred_at`, `contact`) plus a body that depends on its
type, validated as a pydantic discriminated union on `type`. Money is a decimal string, never a
float, so no amount is ever rounded on the way in.
"""

from __future__ import annotations

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
    TypeAdapter,
    WithJsonSchema,
)

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)


class ContactIn(_Model):
    email: EmailStr
    first_name: Name | None = None
    last_name: Name | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] | None = None


class CartLineIn(_Model):
    product_id: Token
    title: Annotated[str, Field(min_length=1, max_length=300)]
    price: Money
    quantity: Annotated[int, Field(ge=1, le=10_000)]
    image_url: Url | None = None
    url: Url | None = None


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


class OrderIn(_Model):
    id: Token
    cart_token: Token | None = None
    currency: Currency
    total: Money
    lines: Annotated[list[OrderLineIn], Field(max_length=500)] = []


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


class _Envelope(_Model):
    id: Annotated[str, Field(min_length=1, max_length=128)]
    occurred_at: AwareDatetime
    contact: ContactIn


class CustomerSubscribed(_Envelope):
    type: Literal["customer_subscribed"]
    source: Annotated[str, Field(max_length=100)] | None = None


class CustomerUnsubscribed(_Envelope):
    type: Literal["customer_unsubscribed"]


class ProductViewed(_Envelope):
    type: Literal["product_viewed"]
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


StoreEventIn = Annotated[
    CustomerSubscribed
    | CustomerUnsubscribed
    | ProductViewed
    | CartUpdated
    | CheckoutStarted
    | OrderPlaced
    | OrderShipped
    | OrderRefunded,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[str, ...] = (
    "customer_subscribed",
    "customer_unsubscribed",
    "product_viewed",
    "cart_updated",
    "checkout_started",
    "order_placed",
    "order_shipped",
    "order_refunded",
)

event_adapter: TypeAdapter[StoreEventIn] = TypeAdapter(StoreEventIn)
batch_adapter: TypeAdapter[list[StoreEventIn]] = TypeAdapter(
    Annotated[list[StoreEventIn], Field(min_length=1, max_length=MAX_BATCH)]
)


def cart_of(event: StoreEventIn) -> CartIn | None:
    return event.cart if isinstance(event, CartUpdated | CheckoutStarted) else None


def occurred(event: StoreEventIn) -> datetime:
    return event.occurred_at
