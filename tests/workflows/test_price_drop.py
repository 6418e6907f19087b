"""Price drop on the time-skipping server, through the real API (`POST /v1/products` raising
`price_dropped`), worker, database and SMTP server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from catalog_support import ago, post_products, product, product_event
from nudge import events as ev
from nudge import queries
from nudge.journeys import JourneyStatus
from nudge.mailcatcher import CaughtMessage
from nudge.models import StoreEvent
from support import Stack, new_email, new_id, order_event, untracked


async def viewed(stack: Stack, email: str, pid: str, price: str = "59.00") -> None:
    await post_products(stack, product(pid, price=price))
    response = await stack.post(product_event(email, product(pid, price=price)))
    assert response.status_code == 202, response.text


async def drop(stack: Stack, pid: str, price: str = "39.00") -> list[str]:
    response = await post_products(stack, product(pid, price=price))
    assert response.status_code == 200, response.text
    return [w for w in response.json()["journeys"] if w.startswith("price_drop-")]


async def start(stack: Stack, email: str, pid: str) -> str:
    await viewed(stack, email, pid)
    [wid] = await drop(stack, pid)
    assert wid.endswith(f"-{pid}")
    return wid


def price_mail(stack: Stack, email: str) -> list[CaughtMessage]:
    # The view also starts a browse journey; only this flow's emails count here.
    return [m for m in stack.mail_to(email) if m.message["X-Nudge-Flow"] == "price_drop"]


async def test_a_viewer_gets_old_and_new_price_an_hour_after_the_drop(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    [sent] = state.emails
    assert (sent.step, sent.status) == ("price_drop_1", "sent")
    assert state.started_at is not None
    assert timedelta(hours=1) <= sent.at - state.started_at < timedelta(hours=1, minutes=1)
    [mail] = price_mail(stack, email)
    assert mail.html is not None and mail.text is not None
    assert "<s>€59.00</s> now €39.00" in mail.html
    assert "was €59.00, now €39.00" in mail.text
    assert f'src="https://shop.example/img/{pid}.jpg"' in mail.html
    assert f"https://shop.example/p/{pid}" in untracked(mail.text, stack.settings.secret_key)


@pytest.mark.parametrize(
    ("goal", "status"),
    [("order_placed", JourneyStatus.CONVERTED), ("customer_unsubscribed", JourneyStatus.EXITED)],
)
async def test_each_exit_goal_ends_it_before_the_email(
    stack: Stack, time_env: WorkflowEnvironment, goal: str, status: JourneyStatus
) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)
    await time_env.sleep(timedelta(minutes=30))
    if goal == "order_placed":
        body = order_event(email, new_id("order"), occurred_at=ago(minutes=1))
    else:
        body = {
            "id": new_id("evt"),
            "type": goal,
            "occurred_at": ago(minutes=1),
            "contact": {"email": email},
        }
    response = await stack.post(body)
    assert wid in response.json()["results"][0]["journeys"]
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason, state.emails) == (status, goal, [])
    assert price_mail(stack, email) == []


async def test_an_order_that_never_reached_the_journey_stops_it(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)
    order = ev.event_adapter.validate_python(order_event(email, new_id("order"), occurred_at=ago()))
    async with stack.sessions.begin() as session:
        contact_id = await queries.upsert_contact(session, order.contact)
        await queries.record_event(session, order, contact_id, order.model_dump(mode="json"))
        await queries.apply_event(session, order, contact_id)
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "converted")
    assert price_mail(stack, email) == []


async def test_one_price_drop_journey_per_contact_per_30_days(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)
    await stack.finish(wid)
    other = new_id("p")
    await viewed(stack, email, other)
    assert await drop(stack, other) == []  # the same contact, days later: refused
    # As if the first drop were 31 days old: the next one starts a journey again.
    [row] = await stack.messages(wid)
    async with stack.sessions.begin() as session:
        first = await session.get(StoreEvent, row.trigger_event_id)
        assert first is not None and first.type == "price_dropped"
        first.occurred_at -= timedelta(days=31)
    assert len(await drop(stack, other, price="29.00")) == 1
