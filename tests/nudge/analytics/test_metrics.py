"""Attribution rules of nudge/analytics/metrics.py on both databases: the last email a person clicked
(5 days) or opened (5 days) before the order gets it; machine activity, transactional emails
and refunded orders never do; windows are settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.analytics import metrics
from nudge.settings import Settings
from nudge.storage.models import Contact, Message, MessageEvent, Order

T0 = datetime(2026, 10, 1, 12, tzinfo=UTC)


class Store:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.tag = uuid.uuid4().hex[:8]

    def flow(self, name: str) -> str:
        return f"{name}_{self.tag}"

    async def contact(self) -> int:
        async with self.sessions.begin() as session:
            contact = Contact(email=f"{uuid.uuid4().hex[:12]}@example.com")
            session.add(contact)
            await session.flush()
            return contact.id

    async def email(
        self, contact_id: int, flow: str, sent: datetime, *, transactional: bool = False
    ) -> str:
        mid = f"{uuid.uuid4().hex}@test"
        async with self.sessions.begin() as session:
            session.add(
                Message(
                    message_id=mid,
                    workflow_id=mid,
                    trigger_event_id="t",
                    step="s1",
                    flow=self.flow(flow),
                    contact_id=contact_id,
                    template="cart_1",
                    status="sent",
                    transactional=transactional,
                    sent_at=sent,
                )
            )
        return mid

    async def event(
        self, mid: str, contact_id: int, kind: str, at: datetime, *, machine: bool = False
    ) -> None:
        async with self.sessions.begin() as session:
            session.add(
                MessageEvent(
                    message_id=mid, contact_id=contact_id, kind=kind, at=at, machine=machine
                )
            )

    async def order(
        self, contact_id: int, at: datetime, total: str, status: str = "placed"
    ) -> None:
        async with self.sessions.begin() as session:
            session.add(
                Order(
                    id=uuid.uuid4().hex,
                    contact_id=contact_id,
                    currency="EUR",
                    total=Decimal(total),
                    placed_at=at,
                    status=status,
                )
            )

    async def conversions(self, settings: Settings) -> dict[str, tuple[int, Decimal]]:
        async with self.sessions() as session:
            rows = await metrics.figures(session, settings, by=("flow",))
        return {
            str(r.keys["flow"]).removesuffix(f"_{self.tag}"): (
                r.figures.conversions,
                r.figures.revenue,
            )
            for r in rows
            if str(r.keys["flow"]).endswith(self.tag)
        }


async def test_the_last_touch_within_its_window_gets_the_order(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    store, settings = Store(sessions), Settings()
    day = timedelta(days=1)

    # 1. Opened a welcome email, then clicked a cart email: the later touch wins.
    c1 = await store.contact()
    welcome = await store.email(c1, "welcome", T0)
    cart = await store.email(c1, "cart", T0)
    await store.event(welcome, c1, "open", T0 + timedelta(hours=1))
    await store.event(cart, c1, "click", T0 + day)
    await store.order(c1, T0 + 2 * day, "10.00")

    # 2. A click 6 days before (outside) and an open 4 days before (inside): the open's email.
    c2 = await store.contact()
    cart_2 = await store.email(c2, "cart", T0)
    welcome_2 = await store.email(c2, "welcome", T0)
    await store.event(cart_2, c2, "click", T0 + day)
    await store.event(welcome_2, c2, "open", T0 + 3 * day)
    await store.order(c2, T0 + 7 * day, "20.00")

    # 3. A click 4 days before, then a privacy proxy's open and an order confirmation read
    #    an hour before: neither counts, the click's email gets it.
    c3 = await store.contact()
    cart_3 = await store.email(c3, "cart", T0)
    receipt = await store.email(c3, "receipt", T0 + 3 * day, transactional=True)
    await store.event(cart_3, c3, "click", T0 + day)
    await store.event(cart_3, c3, "open", T0 + 5 * day - timedelta(hours=1), machine=True)
    await store.event(receipt, c3, "open", T0 + 5 * day - timedelta(hours=1))
    await store.order(c3, T0 + 5 * day, "30.00")

    # 4. Refunded: not counted. 5. Opened after ordering: not the cause.
    c4 = await store.contact()
    cart_4 = await store.email(c4, "cart", T0)
    await store.event(cart_4, c4, "click", T0 + day)
    await store.order(c4, T0 + 2 * day, "40.00", status="refunded")
    c5 = await store.contact()
    cart_5 = await store.email(c5, "cart", T0)
    await store.order(c5, T0 + day, "50.00")
    await store.event(cart_5, c5, "open", T0 + 2 * day)

    assert await store.conversions(settings) == {
        "welcome": (1, Decimal("20.00")),
        "cart": (2, Decimal("40.00")),
        "receipt": (0, Decimal("0.00")),
    }
    # With a 7-day click window, contact 2's click (6 days before) is in, but the open (4 days
    # before) is still the later touch.
    wider = Settings(attribution_click_days=7)
    assert (await store.conversions(wider))["welcome"] == (1, Decimal("20.00"))
    # With a 2-day open window, contact 2's open is out: the order goes nowhere.
    narrow = Settings(attribution_open_days=2)
    assert await store.conversions(narrow) == {
        "welcome": (0, Decimal("0.00")),
        "cart": (2, Decimal("40.00")),
        "receipt": (0, Decimal("0.00")),
    }
