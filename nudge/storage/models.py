"""Database models (SQLAlchemy 2.0, typed). Schema changes go through Alembic migrations."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(12, 2, asdecimal=True)
# SQLite only has 64-bit INTEGER rowids when the column is declared exactly INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, Decimal: Money, dict[str, Any]: JSON}


class Consent(enum.StrEnum):
    SUBSCRIBED = "subscribed"
    # A customer who gave their address at checkout: soft opt-in, may be sent cart reminders.
    IMPLIED = "implied"
    UNSUBSCRIBED = "unsubscribed"
    # Subscribed under double opt-in but has not clicked the confirmation link yet.
    PENDING = "pending"


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"
    # In the SMTP dialogue, final `.` not yet written: a crash here means the server dropped
    # the message, so a retry resends it. See README "Delivery guarantees".
    SENDING = "sending"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str | None] = mapped_column(String(64))
    consent: Mapped[str] = mapped_column(String(16), default=Consent.IMPLIED)
    consent_updated_at: Mapped[datetime | None]
    locale: Mapped[str | None] = mapped_column(String(16))
    # Free-form profile properties a store sends (e.g. {"birthday": "1990-04-02"}).
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))
    loyalty_tier: Mapped[str | None] = mapped_column(String(32))
    loyalty_tier_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ContactTag(Base):
    __tablename__ = "contact_tags"

    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Product(Base):
    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    url: Mapped[str | None] = mapped_column(String(2048))
    image_url: Mapped[str | None] = mapped_column(String(2048))
    price: Mapped[Decimal | None]
    currency: Mapped[str | None] = mapped_column(String(3))
    category: Mapped[str | None] = mapped_column(String(100), index=True)
    in_stock: Mapped[bool] = mapped_column(default=True)
    # What the catalogue (`POST /v1/products`) said last, apart from what events taught us:
    # restocks and price drops are measured against it (nudge/commerce/catalog.py).
    catalog_in_stock: Mapped[bool | None]
    catalog_price: Mapped[Decimal | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Cart(Base):
    __tablename__ = "carts"

    token: Mapped[str] = mapped_column(String(128), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    checkout_url: Mapped[str | None] = mapped_column(String(2048))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    lines: Mapped[list[CartLine]] = relationship(
        order_by="CartLine.position", cascade="all, delete-orphan", lazy="selectin"
    )


class CartLine(Base):
    __tablename__ = "cart_lines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cart_token: Mapped[str] = mapped_column(ForeignKey("carts.token", ondelete="CASCADE"))
    position: Mapped[int]
    product_id: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(300))
    price: Mapped[Decimal]
    quantity: Mapped[int]
    image_url: Mapped[str | None] = mapped_column(String(2048))
    url: Mapped[str | None] = mapped_column(String(2048))

    __table_args__ = (UniqueConstraint("cart_token", "position"),)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    cart_token: Mapped[str | None] = mapped_column(String(128), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[Decimal]
    placed_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="placed")
    shipped_at: Mapped[datetime | None]
    tracking_url: Mapped[str | None] = mapped_column(String(2048))
    discount_code: Mapped[str | None] = mapped_column(String(64))
    # What the order was actually discounted by, after the coupon checks.
    discount_total: Mapped[Decimal | None]

    lines: Mapped[list[OrderLine]] = relationship(
        order_by="OrderLine.position", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (Index(None, "contact_id", "placed_at"),)


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    position: Mapped[int]
    # Indexed for recommendations (bought together, popular).
    product_id: Mapped[str] = mapped_column(String(64), index=True)
    title: Mapped[str] = mapped_column(String(300))
    price: Mapped[Decimal]
    quantity: Mapped[int]

    __table_args__ = (UniqueConstraint("order_id", "position"),)


class StoreEvent(Base):
    """Every store event as received; the primary key makes re-posting an event a no-op."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set once the event has been routed to Temporal; a retry of an event whose routing was cut
    # short (API crash) routes it again instead of dropping it.
    routed_at: Mapped[datetime | None]
    payload: Mapped[dict[str, Any]]
    # The product a `product_viewed` event is about, out of the payload so segments can index it.
    product_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index(None, "contact_id", "occurred_at"),
        Index("ix_events_product_id", "product_id", "occurred_at"),
    )


class JourneyRecord(Base):
    """One row per journey started: lets goal events find a contact's journeys without
    depending on Temporal's eventually consistent visibility store."""

    __tablename__ = "journeys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[str] = mapped_column(String(64))
    flow: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    trigger_event_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set once Temporal reports the run closed; goal events only signal open journeys.
    closed_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("workflow_id", "run_id"),)


class Message(Base):
    """The message log: one row per (journey, step). `message_id` is deterministic, so a retried
    or replayed send finds its row instead of creating a second email."""

    __tablename__ = "messages"

    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(255))
    trigger_event_id: Mapped[str] = mapped_column(String(128))
    step: Mapped[str] = mapped_column(String(64))
    flow: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    template: Mapped[str] = mapped_column(String(64))
    to_email: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.QUEUED)
    reason: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    # The A/B variant of the step that was sent (None for a step without variants).
    variant: Mapped[str | None] = mapped_column(String(32))
    # Transactional mail (order confirmation, shipping) is exempt from consent and smart sending.
    transactional: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Server time at which the workflow scheduled the send (skipped time in tests).
    scheduled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("workflow_id", "trigger_event_id", "step"),
        Index("ix_messages_contact_sent", "contact_id", "sent_at"),
        # Reports group a flow's messages by send time (nudge/analytics/metrics.py).
        Index("ix_messages_flow_sent", "flow", "sent_at"),
    )


class Segment(Base):
    """A segment definition (a pydantic `SegmentDefinition` as JSON), built in or the store's."""

    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    definition: Mapped[dict[str, Any]]
    builtin: Mapped[bool] = mapped_column(default=False)
    # Membership that depends on the clock alone (lapsed N days) is refreshed on a schedule.
    time_based: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SegmentMember(Base):
    __tablename__ = "segment_members"

    segment_id: Mapped[str] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    entered_at: Mapped[datetime] = mapped_column(default=utcnow)


class SegmentChange(Base):
    """Every entry into and exit from a segment, with its time."""

    __tablename__ = "segment_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    segment_id: Mapped[str] = mapped_column(String(64), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    change: Mapped[str] = mapped_column(String(8))  # entered | exited
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set once the flows an entry triggers (`segment_triggers`) have been started, or at once when
    # it triggers none: the outbox of segment entries, so a crash never loses a flow start.
    routed_at: Mapped[datetime | None]

    __table_args__ = (
        Index(None, "contact_id", "at"),
        Index(
            "ix_segment_changes_pending",
            "segment_id",
            "id",
            postgresql_where=text("routed_at IS NULL"),
            sqlite_where=text("routed_at IS NULL"),
        ),
    )


class Coupon(Base):
    """A single-use, per-contact discount code."""

    __tablename__ = "coupons"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # percent | amount
    value: Mapped[Decimal]
    currency: Mapped[str | None] = mapped_column(String(3))
    # What issued it (e.g. a journey step), so issuing again returns the same code.
    source: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    redeemed_at: Mapped[datetime | None]
    redeemed_order_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("contact_id", "source"),)


class CouponAttempt(Base):
    """Each use of a code on an order: redeemed, or refused with the reason (flagged)."""

    __tablename__ = "coupon_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(64), index=True)
    order_id: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    outcome: Mapped[str] = mapped_column(String(16))  # redeemed | refused
    reason: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("code", "order_id"),)


class LoyaltyEntry(Base):
    """The points ledger: per order one earning row and, if refunded, one reversal row
    (idempotent), plus manual adjustments."""

    __tablename__ = "loyalty_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    order_id: Mapped[str | None] = mapped_column(String(64))
    points: Mapped[int]
    reason: Mapped[str] = mapped_column(String(32))  # order | refund | adjustment
    at: Mapped[datetime] = mapped_column(default=utcnow)

    # One earning row and one reversal row per order at most: replays change nothing.
    __table_args__ = (UniqueConstraint("order_id", "reason"),)


class MessageEvent(Base):
    """What happened to a sent message: open, click, bounce, complaint, unsubscribe.
    `machine` flags opens and clicks by privacy proxies and link scanners."""

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(255), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    url: Mapped[str | None] = mapped_column(String(2048))
    machine: Mapped[bool] = mapped_column(default=False)
    # Who fetched the pixel or followed the link (the latest), kept to explain a `machine` flag.
    user_agent: Mapped[str | None] = mapped_column(String(512))
    # Opens and clicks repeat: one row per message, kind, link and `machine`, with the first
    # (`at`) and the latest (`last_at`) time and how many `times`, never a row per repeat.
    last_at: Mapped[datetime | None] = mapped_column(default=None)
    times: Mapped[int] = mapped_column(default=1, server_default="1")

    __table_args__ = (
        Index(None, "contact_id", "kind", "at"),
        Index("ix_message_events_repeat", "message_id", "kind", "machine"),
    )

    @property
    def latest(self) -> datetime:
        return self.last_at or self.at


# ---- deliverability and consent (README "Deliverability and consent") -------------------------


class Suppression(Base):
    """An address Nudge must not email for marketing (or at all, see nudge/contacts/suppression.py):
    one row per contact and reason, kept until removed through the API."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320), index=True)
    # hard_bounce | soft_bounce | complaint | unsubscribe | manual | sunset
    reason: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(32))  # ses | sendgrid | postmark | api | ...
    details: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("contact_id", "reason"),)


class TopicPreference(Base):
    """A contact's choice for one topic (newsletters, promotions, sms) on the preference page."""

    __tablename__ = "topic_preferences"

    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(String(32), primary_key=True)
    subscribed: Mapped[bool]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsentRecord(Base):
    """Proof of consent: every change, with its time, source and the IP it came from."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    # subscribed | pending | confirmed | unsubscribed | topics
    action: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(100))
    ip: Mapped[str | None] = mapped_column(String(45))
    details: Mapped[dict[str, Any] | None]
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index(None, "contact_id", "at"),)


class ProviderReport(Base):
    """Each provider webhook report already applied, by the provider's own id: providers deliver
    at least once, and a retried bounce must not count twice toward the soft-bounce limit."""

    __tablename__ = "provider_reports"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # "<source>:<their id>"
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class AbDecision(Base):
    """The A/B verdict of one flow step: from then on only `winner` is sent (nudge/analytics/abtest.py).
    `numbers` keeps what it was decided on: per variant recipients, successes, P(best)."""

    __tablename__ = "ab_decisions"

    flow: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(16))
    winner: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float]
    numbers: Mapped[dict[str, Any]]
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class DashboardSession(Base):
    """A dashboard sign-in (api/sessions.py). The browser's cookie holds a random id; this row only
    its digest under the dashboard's key, so a copy of the table signs nobody in. Deleting the
    row signs that browser out; past `expires_at` it is refused and swept."""

    __tablename__ = "dashboard_sessions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Installation(Base):
    """This Nudge installation's id (one row, made once): part of every journey's workflow id,
    Message-ID and Temporal search, so two installations sharing a namespace (staging and
    production, two stores, or a database reset against a kept Temporal) never collide."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SenderStatus(Base):
    """A sender fault a worker of `task_queue` found (nudge/storage/sender_status.py), for
    `/healthz`: the SMTP server refuses its login or its TLS. Written when the fault appears or
    changes and when a worker's retry finds it again; deleted when a worker logs in again. Holds
    no password and no recipient: `summary` is what `/healthz` shows, `detail` what the worker
    logged (server, username, the server's reply)."""

    __tablename__ = "sender_status"

    task_queue: Mapped[str] = mapped_column(String(200), primary_key=True)
    summary: Mapped[str] = mapped_column(String(500))
    detail: Mapped[str] = mapped_column(Text)
    worker: Mapped[str] = mapped_column(String(200))
    since: Mapped[datetime] = mapped_column(default=utcnow)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
