"""Price drop on the time-skipping server, through the real API (`POST /v1/products` raising
`price_dropped`), worker, database and SMTP server."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from catalog_support import ago, post_products, product, product_event
from conftest import open_stack
from nudge.contacts import directory
from nudge.dev.mailcatcher import CaughtMessage, MailCatcher
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import JourneyStatus
from nudge.storage.models import StoreEvent
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
from workflows.browse_abandonment import BrowseAbandonment
from workflows.journey import choose
from workflows.price_drop import PriceDrop

# Only the flows these tests are about: another flow's journey, started by the same events and
# still running when a test ends, could be mid-send when its worker stops.
STACK_FLOWS = (PriceDrop,)


async def viewed(stack: Stack, email: str, pid: str, price: str = "59.00") -> None:
    await post_products(stack, product(pid, price=price))
    response = await stack.post(product_event(email, product(pid, price=price)))
    assert response.status_code == 202, response.text


async def drop(stack: Stack, pid: str, price: str = "39.00") -> list[str]:
    response = await post_products(stack, product(pid, price=price))
    assert response.status_code == 200, response.text
    return [w for w in response.json()["journeys"] if "-price_drop-" in w]


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
    await record_history(stack, "price_drop_completed", wid)

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
    assert f"https://shop.example/p/{pid}" in untracked(mail.text, stack.settings)


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


async def test_quiet_hours_hold_the_email_until_they_end(
    time_env: WorkflowEnvironment, temporal: Client, sqlite_url: str, mailcatcher: MailCatcher
) -> None:
    now = await time_env.get_current_time()
    # Due an hour after the drop, inside a window from 30 minutes to 3 hours after it.
    window = quiet_window(
        now, "Europe/Lisbon", starts_in=timedelta(minutes=30), lasts=timedelta(hours=2, minutes=30)
    )
    overrides = {"quiet_hours": window}
    async with open_stack(
        time_env, temporal, sqlite_url, mailcatcher, STACK_FLOWS, settings_overrides=overrides
    ) as quiet:
        wid = await start(quiet, new_email(), new_id("p"))
        state = await quiet.finish(wid)
    assert state.started_at is not None
    [sent] = state.emails
    assert sent.status == "sent"
    # A window that spans a daylight-saving change is an hour longer (autumn) or shorter.
    shift = dst_shift(state.started_at, sent.at)
    assert (
        timedelta(hours=3) + shift
        <= sent.at - state.started_at
        < timedelta(hours=3, minutes=3) + shift
    )
    assert f"{sent.at.astimezone(ZoneInfo('Europe/Lisbon')):%H:%M}" == window.split("-")[1]


async def test_smart_sending_skips_it_after_the_browse_email(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> None:
    email, pid = new_email(), new_id("p")
    flows = (PriceDrop, BrowseAbandonment)
    async with open_stack(time_env, temporal, db_url, mailcatcher, flows) as both:
        # The view starts browse abandonment (its first email 4 hours later); the price drops
        # 3.5 hours after the view, so this flow's email would land 30 minutes after browse_1.
        await viewed(both, email, pid)
        await time_env.sleep(timedelta(hours=3, minutes=30))
        [wid] = await drop(both, pid)
        state = await both.finish(wid)
        browse = await both.finish(
            await journey_id(both, "browse_abandonment", state.contact_id, pid)
        )
    assert state.status == JourneyStatus.COMPLETED
    assert [(e.step, e.status, e.reason) for e in state.emails] == [
        ("price_drop_1", "skipped", "smart_sending")
    ]
    assert [(e.step, e.status) for e in browse.emails] == [
        ("browse_1", "sent"),
        ("browse_2", "sent"),
    ]
    assert price_mail(both, email) == []


async def test_the_ab_variant_is_the_contacts_own_for_good(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, pid = new_email(), new_id("p")
    one = await stack.finish(await start(stack, email, pid))
    expected = choose(f"price_drop\x1fprice_drop_1\x1f{one.contact_id}", {"a": 1, "b": 1})
    subjects = {
        "a": "Ana, the Linen shirt now costs less",
        "b": "A lower price on the Linen shirt",
    }
    [row] = await stack.messages(await journey_id(stack, "price_drop", one.contact_id, pid))
    assert (row.variant, row.template) == (
        expected,
        {"a": "price_drop_1", "b": "price_drop_1_b"}[expected],
    )
    # As if that were 31 days ago: another drop, another journey, the same variant.
    async with stack.sessions.begin() as session:
        first = await session.get(StoreEvent, row.trigger_event_id)
        assert first is not None
        first.occurred_at -= timedelta(days=31)
    other = new_id("p")
    await viewed(stack, email, other)
    await time_env.sleep(timedelta(hours=17))  # past smart sending's 16 hours
    [wid] = await drop(stack, other)
    two = await stack.finish(wid)
    assert [one.emails[0].variant, two.emails[0].variant] == [expected, expected]
    assert [m.message["Subject"] for m in price_mail(stack, email)] == [subjects[expected]] * 2
