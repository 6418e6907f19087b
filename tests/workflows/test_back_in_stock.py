"""Back in stock on the time-skipping server, through the real API (`POST /v1/products` raising
`back_in_stock`), worker, database and SMTP server."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from catalog_support import ago, post_products, product, product_event
from conftest import open_stack
from nudge.contacts import directory
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import JourneyStatus
from support import (
    Stack,
    dst_shift,
    journey_id,
    new_email,
    new_id,
    order_event,
    quiet_window,
    record_history,
    untracked,
)
from workflows.back_in_stock import BackInStock
from workflows.journey import choose

# Only the flows these tests are about: another flow's journey, started by the same events and
# still running when a test ends, could be mid-send when its worker stops.
STACK_FLOWS = (BackInStock,)


async def ask(stack: Stack, email: str, pid: str) -> None:
    """The contact asks to be told; the catalogue has the product sold out."""
    out = product(pid, in_stock=False)
    response = await stack.post(product_event(email, out, type="back_in_stock_requested"))
    assert response.status_code == 202, response.text
    assert (await post_products(stack, out)).status_code == 200


async def restock(stack: Stack, pid: str) -> list[str]:
    response = await post_products(stack, product(pid))
    assert response.status_code == 200, response.text
    return [w for w in response.json()["journeys"] if "-back_in_stock-" in w]


async def start(stack: Stack, email: str, pid: str) -> str:
    await ask(stack, email, pid)
    [wid] = await restock(stack, pid)
    assert wid.endswith(f"-{pid}")
    return wid


async def test_asked_gets_the_news_at_once_and_a_reminder_two_days_later(stack: Stack) -> None:
    email, pid = new_email(), new_id("p")
    wid = await start(stack, email, pid)

    state = await stack.finish(wid)
    await record_history(stack, "back_in_stock_completed", wid)

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
    assert f"https://shop.example/p/{pid}" in untracked(first.text, stack.settings)
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
    # back_in_stock_1 goes out at once: stored before it, the order would stop it too.
    await stack.sent(wid, "back_in_stock_1")
    # At the journey's own clock (the test server's, ahead of the wall clock).
    now = await stack.env.get_current_time()
    order = ev.event_adapter.validate_python(
        order_event(email, new_id("order"), occurred_at=now.isoformat())
    )
    async with stack.sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, order.contact)
        await event_log.record_event(session, order, contact_id, order.model_dump(mode="json"))
        await projection.apply_event(session, order, contact_id)
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "converted")
    rows = await stack.messages(wid)
    assert [(r.step, r.status, r.reason) for r in rows] == [
        ("back_in_stock_1", "sent", None),
        ("back_in_stock_2", "skipped", "converted"),
    ]


async def test_sold_out_again_is_not_announced(stack: Stack, time_env: WorkflowEnvironment) -> None:
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
    # Another product: a journey of its own (run to its end: its first send is immediate,
    # and a journey stopped mid-send would leave the test server unable to skip time).
    other = await stack.finish(await start(stack, email, new_id("p")))
    assert other.status == JourneyStatus.COMPLETED


async def test_quiet_hours_hold_the_news_until_they_end(
    time_env: WorkflowEnvironment, temporal: Client, sqlite_url: str, mailcatcher: MailCatcher
) -> None:
    now = await time_env.get_current_time()
    # The restock comes in the middle of the night (a window from now to 2 hours from now).
    window = quiet_window(now, "Europe/Lisbon", starts_in=timedelta(0), lasts=timedelta(hours=2))
    overrides = {"quiet_hours": window}
    async with open_stack(
        time_env, temporal, sqlite_url, mailcatcher, STACK_FLOWS, settings_overrides=overrides
    ) as quiet:
        wid = await start(quiet, new_email(), new_id("p"))
        state = await quiet.finish(wid)
    assert state.started_at is not None
    first = state.emails[0]
    assert (first.step, first.status) == ("back_in_stock_1", "sent")
    # A window that spans a daylight-saving change is an hour longer (autumn) or shorter.
    shift = dst_shift(state.started_at, first.at)
    assert (
        timedelta(hours=1, minutes=58) + shift
        <= first.at - state.started_at
        < timedelta(hours=2, minutes=2) + shift
    )
    assert f"{first.at.astimezone(ZoneInfo('Europe/Lisbon')):%H:%M}" == window.split("-")[1]


async def test_the_news_ignores_smart_sending_the_reminder_does_not(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, first, second = new_email(), new_id("p"), new_id("p")
    await ask(stack, email, second)
    one = await start(stack, email, first)
    await time_env.sleep(timedelta(hours=1))
    [two] = await restock(stack, second)

    told, reminded = await stack.finish(one), await stack.finish(two)

    assert [(e.step, e.status) for e in told.emails] == [
        ("back_in_stock_1", "sent"),
        ("back_in_stock_2", "sent"),
    ]
    # The second product's news went out an hour after the first's; its reminder, an hour
    # after the first's reminder, is skipped.
    assert [(e.step, e.status, e.reason) for e in reminded.emails] == [
        ("back_in_stock_1", "sent", None),
        ("back_in_stock_2", "skipped", "smart_sending"),
    ]
    assert reminded.status == JourneyStatus.COMPLETED
    assert len(stack.mail_to(email)) == 3


async def test_the_ab_variant_is_the_contacts_own_for_good(stack: Stack) -> None:
    email = new_email()
    one = await stack.finish(await start(stack, email, new_id("p")))
    expected = choose(f"back_in_stock\x1fback_in_stock_1\x1f{one.contact_id}", {"a": 1, "b": 1})
    subjects = {
        "a": "Ana, the Linen shirt is back in stock",
        "b": "Back in stock: the Linen shirt",
    }
    two = await stack.finish(await start(stack, email, new_id("p")))
    assert [one.emails[0].variant, two.emails[0].variant] == [expected, expected]
    news = [m for m in stack.mail_to(email) if m.message["X-Nudge-Step"] == "back_in_stock_1"]
    assert [m.message["Subject"] for m in news] == [subjects[expected]] * 2
    rows = await stack.messages(await journey_id(stack, "back_in_stock", two.contact_id, two.key))
    assert (rows[0].variant, rows[0].template) == (
        expected,
        {"a": "back_in_stock_1", "b": "back_in_stock_1_b"}[expected],
    )
