"""Unique coupons: single-use, per-contact discount codes, and their redemption on orders.

A code is `PREFIX-` and 8 characters drawn by `secrets` from an alphabet without look-alikes
(no 0/O, 1/I/L): 31^8, about 8.5e11 codes, so one cannot be guessed from another. Issuing is
idempotent per (contact, source): a retried email step gets the code it was first given, never a
second one. A code is redeemed by the first order of its owner placed before it expires; any
other use is refused with the reason and the order is recorded as not discounted (flagged).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.settings import Settings
from nudge.storage.db import insert_for, rowcount
from nudge.storage.models import Coupon, CouponAttempt, Order, utcnow

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 8
CENT = Decimal("0.01")
SOURCE_LENGTH = 255  # longer sources are stored as their hash


class CouponKind(enum.StrEnum):
    PERCENT = "percent"
    AMOUNT = "amount"


class Refusal(enum.StrEnum):
    UNKNOWN = "unknown"
    OTHER_CONTACT = "other_contact"
    EXPIRED = "expired"
    ALREADY_USED = "already_used"
    # An amount coupon in another currency than the order's.
    CURRENCY = "currency"


class CouponCollision(Exception):
    """Fresh codes kept colliding with existing ones: the code space is exhausted."""


def new_code(prefix: str) -> str:
    return f"{prefix}-" + "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalise(code: str) -> str:
    """What a customer typed, as codes are stored: "nudge-abcd2345 " -> "NUDGE-ABCD2345"."""
    return code.strip().upper()


def discount_for(segments: Collection[str], settings: Settings) -> tuple[CouponKind, Decimal]:
    """The discount a contact in these segments gets: the highest percent that applies (the
    base, `vip`'s, or any of NUDGE_COUPON_SEGMENT_PERCENTS)."""
    percents = [settings.coupon_percent]
    if "vip" in segments:
        percents.append(settings.coupon_vip_percent)
    percents += [p for s, p in settings.coupon_segment_percents.items() if s in segments]
    return CouponKind.PERCENT, Decimal(max(percents))


async def issue(
    session: AsyncSession,
    contact_id: int,
    *,
    source: str,
    kind: CouponKind | str,
    value: Decimal,
    currency: str | None,
    expires_at: datetime,
    prefix: str,
    draw: Callable[[str], str] = new_code,
) -> Coupon:
    """The contact's coupon for `source`: the one issued before, or a new unique code (`draw`
    makes one from the prefix)."""
    kind = CouponKind(kind)
    if len(source) > SOURCE_LENGTH:
        source = "sha256:" + hashlib.sha256(source.encode()).hexdigest()
    if kind == CouponKind.PERCENT and not 0 < value <= 100:
        raise ValueError(f"a percent coupon is worth more than 0 and at most 100, not {value}")
    if kind == CouponKind.AMOUNT and (value <= 0 or currency is None):
        raise ValueError("an amount coupon is worth more than 0 in a currency")
    for _ in range(8):
        existing = await _by_source(session, contact_id, source)
        if existing is not None:
            return existing
        code = draw(prefix)
        stmt = (
            insert_for(session, Coupon)
            .values(
                code=code,
                contact_id=contact_id,
                kind=kind.value,
                value=value,
                currency=currency,
                source=source,
                expires_at=expires_at,
                created_at=utcnow(),
            )
            # Either unique key: the code (a collision: draw again) or (contact, source) (a
            # concurrent issue won: return its code).
            .on_conflict_do_nothing()
        )
        if rowcount(await session.execute(stmt)):
            coupon = await _get(session, code)
            assert coupon is not None
            return coupon
    raise CouponCollision(f"no free code with prefix {prefix!r} after 8 draws")


async def _by_source(session: AsyncSession, contact_id: int, source: str) -> Coupon | None:
    return await session.scalar(
        select(Coupon)
        .where(Coupon.contact_id == contact_id, Coupon.source == source)
        .execution_options(populate_existing=True)
    )


async def _get(session: AsyncSession, code: str) -> Coupon | None:
    return await session.scalar(
        select(Coupon).where(Coupon.code == code).execution_options(populate_existing=True)
    )


def discount_amount(coupon: Coupon, subtotal: Decimal) -> Decimal:
    """What the coupon takes off `subtotal`: a percent of it, or the amount (at most all)."""
    if coupon.kind == CouponKind.PERCENT:
        return (subtotal * coupon.value / 100).quantize(CENT, rounding=ROUND_HALF_UP)
    return min(coupon.value, subtotal)


async def redeem(
    session: AsyncSession,
    *,
    code: str,
    order_id: str,
    contact_id: int,
    subtotal: Decimal,
    currency: str,
    placed_at: datetime,
) -> CouponAttempt:
    """Apply `code` to a new order: redeem it if valid, otherwise refuse it with the reason.
    Either way one `coupon_attempts` row records it and `orders.discount_total` is set (0 when
    refused). Idempotent: the same (code, order) again returns the first attempt."""
    code = normalise(code)
    earlier = await _attempt(session, code, order_id)
    if earlier is not None:
        return earlier
    coupon = await session.scalar(
        select(Coupon)
        .where(Coupon.code == code)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    reason = await _claim(
        session, coupon, order_id=order_id, contact_id=contact_id, currency=currency, at=placed_at
    )
    discount = (
        discount_amount(coupon, subtotal) if coupon is not None and reason is None else Decimal(0)
    )
    await session.execute(
        update(Order)
        .where(Order.id == order_id, Order.contact_id == contact_id)
        .values(discount_total=discount)
    )
    await session.execute(
        insert_for(session, CouponAttempt)
        .values(
            code=code,
            order_id=order_id,
            contact_id=contact_id,
            outcome="redeemed" if reason is None else "refused",
            reason=None if reason is None else reason.value,
            at=placed_at,
        )
        .on_conflict_do_nothing(index_elements=["code", "order_id"])
    )
    attempt = await _attempt(session, code, order_id)
    assert attempt is not None
    return attempt


async def _claim(
    session: AsyncSession,
    coupon: Coupon | None,
    *,
    order_id: str,
    contact_id: int,
    currency: str,
    at: datetime,
) -> Refusal | None:
    """Mark `coupon` redeemed by the order, or the reason it may not be (nothing is changed
    then). None also when the order had already redeemed it."""
    if coupon is None:
        return Refusal.UNKNOWN
    if coupon.contact_id != contact_id:
        return Refusal.OTHER_CONTACT
    if coupon.redeemed_order_id not in (None, order_id):
        return Refusal.ALREADY_USED
    if at >= coupon.expires_at:
        return Refusal.EXPIRED
    if coupon.kind == CouponKind.AMOUNT and coupon.currency != currency:
        return Refusal.CURRENCY
    if coupon.redeemed_order_id is None:
        # Guarded by the row lock on PostgreSQL and by this condition everywhere: of two orders
        # racing for one code, only one redeems it.
        claimed = await session.execute(
            update(Coupon)
            .where(Coupon.code == coupon.code, Coupon.redeemed_at.is_(None))
            .values(redeemed_at=at, redeemed_order_id=order_id)
        )
        if not rowcount(claimed):
            return Refusal.ALREADY_USED
    return None


async def _attempt(session: AsyncSession, code: str, order_id: str) -> CouponAttempt | None:
    return await session.scalar(
        select(CouponAttempt)
        .where(CouponAttempt.code == code, CouponAttempt.order_id == order_id)
        .execution_options(populate_existing=True)
    )


async def attempts_of(session: AsyncSession, code: str) -> Sequence[CouponAttempt]:
    """Every use of a code, oldest first: the redemption and the refused (flagged) ones."""
    result = await session.scalars(
        select(CouponAttempt)
        .where(CouponAttempt.code == normalise(code))
        .order_by(CouponAttempt.at, CouponAttempt.id)
    )
    return result.all()
