"""Back in stock on the time-skipping server, through the real API (`POST /v1/products` raising
`back_in_stock`), worker, database and SMTP server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from catalog_support import ago, post_products, product, product_event
from nudge import events as ev
from nudge import queries
from nudge.journeys import JourneyStatus
from support import Stack, new_email, new_id, order_event, untracked


async def ask(stack: Stack, email: str, pid: str) -> None:
    """The contact asks to be told; the catalogue has the product sold out."""
    out = product(pid, in_stock=False)
    response = await stack.post(product_event(email, out, type="back_in_stock_requested"))
    assert response.status_code == 202, response.text
    assert (await post_products(stack, out)).status_code == 200


async def restock(stack: Stack, pid: str) -> list[str]:
    response = await post_products(stack, product(pid))
    assert response.status_code == 200, response.text
    return [w for w in response.json()["journeys"] if w.startswith("back_in_stock-")]


async def start(stack: Stack, email: str, pid: str) -> str:
    await ask(stack, email, pid)
    [wid] = await restock(stack, pid)
    assert wid.endswith(f"-{pid}")
    return wid


async def test_asked_gets_the_news_at_once_and_a_reminder_two_days_later(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [(e.step, e.status) for e in state.emails] == [
        ("back_in_stock_1", "sent"),
        ("back_in_stock_2", "sent"),
    ]
    assert state.started_at is not None
    offsets = [e.at - state.started_at for e in state.emails]
    assert offsets[0] < timedelta(minutes=1)
    assert timedelta(days=2) <= offsets[1] < timedelta(days=2, minutes=1)
    first, second = stack.mail_to(email)
    assert first.html is not None and first.text is not None
    assert "Linen shirt" in first.html and "€49.00" in first.html
    assert f'src="https://shop.example/img/{pid}.jpg"' in first.html
    assert f"https://shop.example/p/{pid}" in untracked(first.text, stack.settings.secret_key)
    assert second.message["X-Nudge-Step"] == "back_in_stock_2"


async def test_a_recent_viewer_is_told_too(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    await stack.post(product_event(email, product(pid, in_stock=False), occurred_at=ago(days=3)))
    await post_products(stack, product(pid, in_stock=False))
    [wid] = await restock(stack, pid)
    state = await stack.finish(wid)
    assert [e.step for e in state.emails] == ["back_in_stock_1", "back_in_stock_2"]


@pytest.mark.parametrize(
    ("goal", "status"),
    [("order_placed", JourneyStatus.CONVERTED), ("customer_unsubscribed", JourneyStatus.EXITED)],
)
async def test_each_exit_goal_ends_it_before_the_reminder(
    stack: Stack, time_env: WorkflowEnvironment, goal: str, status: JourneyStatus
) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)
    await time_env.sleep(timedelta(hours=1))
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
    assert (state.status, state.exit_reason) == (status, goal)
    assert [e.step for e in state.emails] == ["back_in_stock_1"]
    assert len(stack.mail_to(email)) == 1


async def test_an_order_that_never_reached_the_journey_stops_the_reminder(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)
    order = ev.event_adapter.validate_python(order_event(email, new_id("order"), occurred_at=ago()))
    async with stack.sessions.begin() as session:
        contact_id = await queries.upsert_contact(session, order.contact)
        await queries.record_event(session, order, contact_id, order.model_dump(mode="json"))
        await queries.apply_event(session, order, contact_id)
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "converted")
    rows = await stack.messages(wid)
    assert [(r.step, r.status, r.reason) for r in rows] == [
        ("back_in_stock_1", "sent", None),
        ("back_in_stock_2", "skipped", "converted"),
    ]


async def test_sold_out_again_is_not_announced(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)
    await time_env.sleep(timedelta(hours=1))
    await post_products(stack, product(pid, in_stock=False))
    state = await stack.finish(wid)
    assert state.status == JourneyStatus.COMPLETED
    rows = await stack.messages(wid)
    assert [(r.step, r.status, r.reason) for r in rows] == [
        ("back_in_stock_1", "sent", None),
        ("back_in_stock_2", "skipped", "out_of_stock"),
    ]
    assert len(stack.mail_to(email)) == 1


async def test_one_journey_per_contact_and_product(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)
    await stack.finish(wid)
    # Sold out and back again: the contact asked again, but was told about this product once.
    await ask(stack, email, pid)
    assert await restock(stack, pid) == []
    # Another product: a journey of its own.
    await start(stack, email, new_id("p"))
