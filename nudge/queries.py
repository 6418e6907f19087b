"""Every SQL statement Nudge runs, in one place, written once for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    String,
    and_,
    cast,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from nudge import consent, coupons, loyalty
from nudge import events as ev
from nudge.models import (
    Cart,
    CartLine,
    Consent,
    Contact,
    ContactTag,
    Journey,
    Message,
    MessageStatus,
    Order,
    OrderLine,
    Product,
    StoreEvent,
    utcnow,
)
from nudge.settings import Settings, get_settings


def _rowcount(result: Any) -> int:
    # DML results are CursorResults; the generic Result type does not declare rowcount.
    return int(result.rowcount)


def _insert(session: AsyncSession, model: type[Any]) -> Any:
    """INSERT with ON CONFLICT support for the session's dialect."""
    name = session.get_bind().dialect.name
    return (sqlite.insert if name == "sqlite" else postgresql.insert)(model)


# ---- store events --------------------------------------------------------------------------


async def upsert_contact(session: AsyncSession, contact: ev.ContactIn) -> int:
    stmt = _insert(session, Contact).values(
        email=contact.email.lower(),
        first_name=contact.first_name,
        last_name=contact.last_name,
        timezone=contact.timezone,
        locale=contact.locale,
        properties=contact.properties or {},
        consent=Consent.IMPLIED,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    # Only fields the event actually carries (and not as null) overwrite what we know.
    fields = contact.model_dump(
        exclude_unset=True, exclude_none=True, exclude={"email", "properties", "tags"}
    )
    changes = {name: stmt.excluded[name] for name in fields} | {
        "updated_at": stmt.excluded.updated_at
    }
    if contact.properties:
        # Merged key by key: a property the event does not mention keeps its value.
        changes["properties"] = _json_merge(session, Contact.properties, stmt.excluded.properties)
    stmt = stmt.on_conflict_do_update(index_elements=["email"], set_=changes).returning(Contact.id)
    contact_id = int((await session.execute(stmt)).scalar_one())
    if contact.tags:
        await session.execute(
            _insert(session, ContactTag)
            .values(
                [
                    {"contact_id": contact_id, "tag": tag, "created_at": utcnow()}
                    for tag in dict.fromkeys(contact.tags)
                ]
            )
            .on_conflict_do_nothing()
        )
    return contact_id


def _json_merge(session: AsyncSession, old: Any, new: Any) -> Any:
    """`old` with the top-level keys of `new` set: SQLite's json_patch, PostgreSQL's jsonb ||."""
    if session.get_bind().dialect.name == "sqlite":
        return func.json_patch(old, new)
    merged = cast(old, postgresql.JSONB).op("||")(cast(new, postgresql.JSONB))
    return cast(merged, JSON)


async def merge_properties(
    session: AsyncSession, contact_id: int, properties: dict[str, Any]
) -> None:
    """Set the contact's properties named in `properties`, keeping the others; a None value
    removes that property (JSON merge patch, RFC 7396). One UPDATE, so a concurrent event
    that changes another property is not overwritten."""
    if not properties:
        return
    current = func.coalesce(Contact.properties, literal({}, JSON))
    if session.get_bind().dialect.name == "sqlite":
        merged: Any = func.json_patch(current, literal(properties, JSON))
    else:
        kept = {name: value for name, value in properties.items() if value is not None}
        removed = [name for name, value in properties.items() if value is None]
        patched = cast(current, postgresql.JSONB).op("||")(
            cast(literal(kept, JSON), postgresql.JSONB)
        )
        if removed:
            patched = patched.op("-")(literal(removed, postgresql.ARRAY(String)))
        merged = cast(patched, JSON)
    await session.execute(
        update(Contact)
        .where(Contact.id == contact_id)
        .values(properties=merged, updated_at=utcnow())
    )


async def add_tags(session: AsyncSession, contact_id: int, tags: Sequence[str]) -> None:
    """Tag the contact; a tag it already has is left as it was."""
    if tags:
        await session.execute(
            _insert(session, ContactTag)
            .values(
                [
                    {"contact_id": contact_id, "tag": tag, "created_at": utcnow()}
                    for tag in dict.fromkeys(tags)
                ]
            )
            .on_conflict_do_nothing()
        )


async def event_status(session: AsyncSession, event_id: str) -> StoreEvent | None:
    return await session.get(StoreEvent, event_id)


async def record_event(
    session: AsyncSession, event: ev.StoreEventIn, contact_id: int, payload: dict[str, Any]
) -> bool:
    """Store the raw event; False if an event with this id is already stored."""
    stmt = (
        _insert(session, StoreEvent)
        .values(
            id=event.id,
            type=event.type,
            contact_id=contact_id,
            occurred_at=event.occurred_at,
            received_at=utcnow(),
            payload=payload,
            product_id=event.product.id if isinstance(event, ev.ProductViewed) else None,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    return _rowcount(await session.execute(stmt)) > 0


async def mark_routed(session: AsyncSession, event_id: str) -> None:
    await session.execute(
        update(StoreEvent).where(StoreEvent.id == event_id).values(routed_at=utcnow())
    )


async def apply_event(
    session: AsyncSession,
    event: ev.StoreEventIn,
    contact_id: int,
    *,
    settings: Settings | None = None,
) -> bool:
    """Fold an event into contacts, products, carts and orders (idempotent). Returns False for
    an event older than what is stored (a stale cart snapshot), which must not reach journeys.

    An event can cause internal events (a loyalty tier change): they are stored in the same
    transaction, unrouted, and `follow_ups(session, event.id)` returns them for routing."""
    settings = settings or get_settings()
    change: loyalty.TierChange | None = None
    match event:
        case ev.CartUpdated(cart=cart) | ev.CheckoutStarted(cart=cart):
            return await _upsert_cart(session, cart, contact_id, event.occurred_at)
        case ev.OrderPlaced(order=order):
            change = await _insert_order(session, order, contact_id, event.occurred_at, settings)
        case ev.OrderShipped(order=shipment):
            await session.execute(
                update(Order)
                .where(Order.id == shipment.id, Order.contact_id == contact_id)
                .values(
                    status="shipped",
                    shipped_at=event.occurred_at,
                    tracking_url=shipment.tracking_url,
                )
            )
        case ev.OrderRefunded(order=refund):
            await session.execute(
                update(Order)
                .where(Order.id == refund.id, Order.contact_id == contact_id)
                .values(status="refunded")
            )
            change = await loyalty.on_refund(
                session, settings, contact_id=contact_id, order_id=refund.id, at=event.occurred_at
            )
        case ev.ProductViewed(product=product):
            await _upsert_products(session, [product.model_dump()], with_stock=True)
        case ev.CustomerSubscribed():
            await consent.on_subscribed(session, settings, event, contact_id)
        case ev.CustomerUnsubscribed():
            await consent.on_unsubscribed(session, event, contact_id)
    if change is not None:
        await _record_follow_up(
            session,
            ev.LoyaltyTierChanged(
                id=follow_up_id(event.id, "loyalty_tier_changed"),
                type="loyalty_tier_changed",
                occurred_at=change.at,
                contact=ev.ContactIn(email=event.contact.email),
                loyalty=ev.TierChangeIn(old=change.old, new=change.new),
            ),
            contact_id,
        )
    return True


def follow_up_id(source_event_id: str, type: str) -> str:
    """The id of the internal event of `type` caused by an event: the same on every replay."""
    candidate = f"{source_event_id}:{type}"
    if len(candidate) <= 128:
        return candidate
    return f"{hashlib.sha256(source_event_id.encode()).hexdigest()[:64]}:{type}"


async def _record_follow_up(
    session: AsyncSession, follow_up: ev.StoreEventIn, contact_id: int
) -> None:
    await record_event(session, follow_up, contact_id, follow_up.model_dump(mode="json"))


async def follow_ups(session: AsyncSession, event_id: str) -> list[ev.StoreEventIn]:
    """The internal events that event `event_id` caused and that are not routed yet: route
    each like a store event, then `mark_routed` it, before marking `event_id` routed."""
    ids = [follow_up_id(event_id, type) for type in ev.INTERNAL_EVENT_TYPES]
    rows = await session.scalars(
        select(StoreEvent)
        .where(StoreEvent.id.in_(ids), StoreEvent.routed_at.is_(None))
        .order_by(StoreEvent.occurred_at, StoreEvent.id)
    )
    return [ev.stored_event_adapter.validate_python(row.payload) for row in rows]


async def _upsert_products(
    session: AsyncSession, products: Sequence[dict[str, Any]], *, with_stock: bool = False
) -> None:
    """Learn the catalogue from events. A field an event leaves out (a cart line has no stock
    level, often no picture) keeps what an earlier event told us."""
    columns = ["title", "url", "image_url", "price", "currency", "category"] + (
        ["in_stock"] if with_stock else []
    )
    # One row per product (the last line wins): PostgreSQL refuses to upsert a row twice.
    by_id = {p["id"]: p for p in products}
    rows = [
        {"id": p["id"], **{c: p.get(c) for c in columns}, "updated_at": utcnow()}
        for p in by_id.values()
    ]
    if not rows:
        return
    stmt = _insert(session, Product).values(rows)
    changes = {c: func.coalesce(stmt.excluded[c], getattr(Product, c)) for c in columns}
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"], set_=changes | {"updated_at": stmt.excluded.updated_at}
    )
    await session.execute(stmt)


async def _upsert_cart(
    session: AsyncSession, cart: ev.CartIn, contact_id: int, occurred_at: datetime
) -> bool:
    stmt = _insert(session, Cart).values(
        token=cart.token,
        contact_id=contact_id,
        currency=cart.currency,
        checkout_url=cart.checkout_url,
        updated_at=occurred_at,
    )
    # Events can arrive out of order: an older snapshot of the cart never replaces a newer one.
    stmt = stmt.on_conflict_do_update(
        index_elements=["token"],
        set_={
            "contact_id": stmt.excluded.contact_id,
            "currency": stmt.excluded.currency,
            "checkout_url": stmt.excluded.checkout_url,
            "updated_at": stmt.excluded.updated_at,
        },
        where=Cart.updated_at <= stmt.excluded.updated_at,
    )
    if not _rowcount(await session.execute(stmt)):
        return False
    await session.execute(delete(CartLine).where(CartLine.cart_token == cart.token))
    if cart.lines:
        await session.execute(
            _insert(session, CartLine).values(
                [
                    {
                        "cart_token": cart.token,
                        "position": i,
                        **line.model_dump(exclude={"category"}),
                    }
                    for i, line in enumerate(cart.lines)
                ]
            )
        )
        await _upsert_products(
            session,
            [
                {
                    "id": line.product_id,
                    "currency": cart.currency,
                    **line.model_dump(exclude={"product_id", "quantity"}),
                }
                for line in cart.lines
            ],
        )
    return True


async def _insert_order(
    session: AsyncSession,
    order: ev.OrderIn,
    contact_id: int,
    placed_at: datetime,
    settings: Settings,
) -> loyalty.TierChange | None:
    """Store a new order with its lines, apply its discount code and earn its points; an order
    already stored (a replay) changes nothing."""
    stmt = (
        _insert(session, Order)
        .values(
            id=order.id,
            contact_id=contact_id,
            cart_token=order.cart_token,
            currency=order.currency,
            total=order.total,
            placed_at=placed_at,
            status="placed",
            discount_code=order.discount_code,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    if not _rowcount(await session.execute(stmt)):
        return None
    if order.lines:
        await session.execute(
            _insert(session, OrderLine).values(
                [
                    {
                        "order_id": order.id,
                        "position": i,
                        **line.model_dump(exclude={"category"}),
                    }
                    for i, line in enumerate(order.lines)
                ]
            )
        )
        await _upsert_products(
            session,
            [
                {"id": line.product_id, "title": line.title, "category": line.category}
                for line in order.lines
            ],
        )
    # Only Nudge's own codes are checked: a store's other codes (SUMMER10) are none of our
    # business, while a code with our prefix that we never issued is flagged as refused.
    if order.discount_code and coupons.normalise(order.discount_code).startswith(
        f"{coupons.normalise(settings.coupon_prefix)}-"
    ):
        subtotal = sum((line.price * line.quantity for line in order.lines), start=Decimal(0))
        await coupons.redeem(
            session,
            code=order.discount_code,
            order_id=order.id,
            contact_id=contact_id,
            subtotal=subtotal if order.lines else order.total,
            currency=order.currency,
            placed_at=placed_at,
        )
    return await loyalty.on_order(
        session,
        settings,
        contact_id=contact_id,
        order_id=order.id,
        total=order.total,
        at=placed_at,
    )


# ---- journeys ------------------------------------------------------------------------------


async def record_journey(
    session: AsyncSession,
    *,
    workflow_id: str,
    run_id: str,
    flow: str,
    contact_id: int,
    event_id: str,
) -> None:
    stmt = (
        _insert(session, Journey)
        .values(
            workflow_id=workflow_id,
            run_id=run_id,
            flow=flow,
            contact_id=contact_id,
            trigger_event_id=event_id,
            started_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["workflow_id", "run_id"])
    )
    await session.execute(stmt)


async def open_journeys(
    session: AsyncSession, contact_id: int, flows: Sequence[str]
) -> list[Journey]:
    result = await session.scalars(
        select(Journey).where(
            Journey.contact_id == contact_id, Journey.flow.in_(flows), Journey.closed_at.is_(None)
        )
    )
    return list(result)


async def previous_journeys(
    session: AsyncSession, flow: str, contact_id: int
) -> list[tuple[str, datetime]]:
    """The contact's journeys of `flow`: (workflow id, when the event that started it occurred),
    for the flow's re-entry rule. A journey started by a segment entry has no stored event; its
    start time stands in."""
    rows = await session.execute(
        select(Journey.workflow_id, func.coalesce(StoreEvent.occurred_at, Journey.started_at))
        .outerjoin(StoreEvent, StoreEvent.id == Journey.trigger_event_id)
        .where(Journey.flow == flow, Journey.contact_id == contact_id)
    )
    return [(wid, at) for wid, at in rows.all()]


async def contact_timezone(session: AsyncSession, contact_id: int) -> str | None:
    return await session.scalar(select(Contact.timezone).where(Contact.id == contact_id))


async def close_journey(session: AsyncSession, journey_id: int) -> None:
    await session.execute(
        update(Journey).where(Journey.id == journey_id).values(closed_at=utcnow())
    )


async def contact_by_email(session: AsyncSession, email: str) -> Contact | None:
    return await session.scalar(select(Contact).where(Contact.email == email.lower()))


async def journeys_of(session: AsyncSession, contact_id: int, limit: int = 50) -> list[Journey]:
    result = await session.scalars(
        select(Journey)
        .where(Journey.contact_id == contact_id)
        .order_by(Journey.started_at.desc(), Journey.id.desc())
        .limit(limit)
    )
    return list(result)


# ---- sending -------------------------------------------------------------------------------


async def find_message(
    session: AsyncSession, workflow_id: str, trigger_event_id: str, step: str
) -> Message | None:
    """The log row of one (journey, step), if any, as it is now (not locked)."""
    stmt = (
        select(Message)
        .where(
            Message.workflow_id == workflow_id,
            Message.trigger_event_id == trigger_event_id,
            Message.step == step,
        )
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def claim_message(session: AsyncSession, values: dict[str, Any]) -> Message:
    """The log row of one (journey, step), created queued on first sight. Found by the step, not
    the Message-ID, so a row keeps the id it was first sent with even if the sender's domain
    changes between retries. Locked on PostgreSQL so that two concurrent attempts of the same
    step cannot both send."""
    await session.execute(
        _insert(session, Message).values(created_at=utcnow(), **values).on_conflict_do_nothing()
    )
    stmt = (
        select(Message)
        .where(
            Message.workflow_id == values["workflow_id"],
            Message.trigger_event_id == values["trigger_event_id"],
            Message.step == values["step"],
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one()


async def has_converted(
    session: AsyncSession, contact_id: int, cart_token: str | None, since: datetime
) -> bool:
    """An order for this cart, or any order by the contact since the journey started."""
    condition = and_(Order.contact_id == contact_id, Order.placed_at >= since)
    if cart_token:
        condition = or_(condition, Order.cart_token == cart_token)
    return bool(await session.scalar(select(exists().where(condition))))


async def marketing_sent_since(
    session: AsyncSession, contact_id: int, since: datetime, *, exclude: tuple[str, str]
) -> bool:
    """Whether the contact got (or is being sent) a marketing email scheduled after `since`,
    other than the step `exclude` (workflow id, step): smart sending, across every flow."""
    workflow_id, step = exclude
    stmt = select(
        exists().where(
            Message.contact_id == contact_id,
            Message.transactional.is_(False),
            Message.status.in_((MessageStatus.SENT, MessageStatus.SENDING)),
            Message.scheduled_at > since,
            ~and_(Message.workflow_id == workflow_id, Message.step == step),
        )
    )
    return bool(await session.scalar(stmt))


async def mark_sent(session: AsyncSession, message_id: str, attempt: int) -> bool:
    """`sending` -> `sent`, only for the attempt that holds the row; False if superseded."""
    stmt = (
        update(Message)
        .where(
            Message.message_id == message_id,
            Message.status == MessageStatus.SENDING,
            Message.attempts == attempt,
        )
        .values(status=MessageStatus.SENT, sent_at=utcnow(), error=None)
    )
    return _rowcount(await session.execute(stmt)) == 1


async def set_message_status(session: AsyncSession, message_id: str, **values: Any) -> None:
    await session.execute(update(Message).where(Message.message_id == message_id).values(**values))


async def get_cart(session: AsyncSession, token: str) -> Cart | None:
    return await session.get(Cart, token)
