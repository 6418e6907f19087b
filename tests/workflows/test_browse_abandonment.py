"""Browse abandonment on the time-skipping server, through the real API, worker, database and
SMTP server: a view, 4 hours, the product and similar ones, a day, one more nudge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
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
    cart_event,
    dst_shift,
    new_email,
    new_id,
    order_event,
    quiet_window,
    quiet_window_end,
    record_history,
    untracked,
)
from workflows.back_in_stock import BackInStock
from workflows.browse_abandonment import BrowseAbandonment
from workflows.journey import choose

# Only the flows these tests are about: another flow's journey, started by the same events and
# still running when a test ends, could be mid-send when its worker stops.
STACK_FLOWS = (BrowseAbandonment, BackInStock)


async def view(stack: Stack, email: str, item: dict[str, Any], **kwargs: Any) -> list[str]:
    response = await stack.post(product_event(email, item, **kwargs))
    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    return list(result["journeys"])


async def start_browse(stack: Stack, email: str, item: dict[str, Any], **kwargs: Any) -> str:
    [wid] = await view(stack, email, item, **kwargs)
    assert "-browse_abandonment-" in wid and wid.endswith(f"-{item['id']}")
    return wid


async def test_a_view_gets_the_product_then_one_more_nudge(stack: Stack) -> None:
    email, pid, similar, category = new_email(), new_id("p"), new_id("p"), new_id("linen")
    # A product like it (same category, in stock, with a picture) to recommend.
    like_it = product(similar, title="Linen trousers", price="59.00", category=category)
    await post_products(stack, like_it)
    wid = await start_browse(stack, email, product(pid, category=category))

    state = await stack.finish(wid)
    await record_history(stack, "browse_abandonment_completed", wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [(e.step, e.status) for e in state.emails] == [
        ("browse_1", "sent"),
        ("browse_2", "sent"),
    ]
    assert state.started_at is not None
    offsets = [e.at - state.started_at for e in state.emails]
    for offset, expected in zip(offsets, (4, 28), strict=True):
        assert timedelta(hours=expected) <= offset < timedelta(hours=expected, minutes=1)

    first, second = stack.mail_to(email)
    assert first.html is not None and first.text is not None
    assert "Linen shirt" in first.html and "€49.00" in first.html
    assert f'src="https://shop.example/img/{pid}.jpg"' in first.html
    assert (
        "Linen trousers" in first.html and f"https://shop.example/img/{similar}.jpg" in first.html
    )
    assert f"https://shop.example/p/{pid}" in untracked(first.text, stack.settings)
    assert second.text is not None and "Linen shirt" in second.text
    rows = await stack.messages(wid)
    assert [(r.step, r.status) for r in rows] == [("browse_1", "sent"), ("browse_2", "sent")]
    assert rows[0].variant in ("a", "b") and rows[1].variant is None


@pytest.mark.parametrize(
    ("goal", "status"),
    [
        ("cart_updated", JourneyStatus.EXITED),
        ("checkout_started", JourneyStatus.EXITED),
        ("order_placed", JourneyStatus.CONVERTED),
        ("customer_unsubscribed", JourneyStatus.EXITED),
    ],
)
async def test_each_exit_goal_ends_it_while_it_waits(
    stack: Stack, time_env: WorkflowEnvironment, goal: str, status: JourneyStatus
) -> None:
    email = new_email()
    wid = await start_browse(stack, email, product(new_id("p")))
    await time_env.sleep(timedelta(hours=5))
    assert len(stack.mail_to(email)) == 1

    if goal == "order_placed":
        body = order_event(email, new_id("order"), occurred_at=ago(minutes=1))
    elif goal == "customer_unsubscribed":
        body = {
            "id": new_id("evt"),
            "type": goal,
            "occurred_at": ago(minutes=1),
            "contact": {"email": email},
        }
    else:
        body = cart_event(email, new_id("cart"), type=goal, occurred_at=ago(minutes=1))
    response = await stack.post(body)
    assert wid in response.json()["results"][0]["journeys"]

    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (status, goal)
    assert [e.step for e in state.emails] == ["browse_1"]
    assert len(stack.mail_to(email)) == 1


async def test_a_contact_already_in_the_cart_flow_gets_nothing(stack: Stack) -> None:
    """A cart whose event never reached the journey (stored, never routed) still stops it."""
    email = new_email()
    wid = await start_browse(stack, email, product(new_id("p")))
    # At the journey's own clock (the test server's, ahead of the wall clock).
    now = await stack.env.get_current_time()
    cart = ev.event_adapter.validate_python(
        cart_event(email, new_id("cart"), occurred_at=now.isoformat())
    )
    async with stack.sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, cart.contact)
        await event_log.record_event(session, cart, contact_id, cart.model_dump(mode="json"))
        await projection.apply_event(session, cart, contact_id)

    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "in_cart_flow")
    [row] = await stack.messages(wid)
    assert (row.step, row.status, row.reason) == ("browse_1", "skipped", "in_cart_flow")
    assert stack.mail_to(email) == []


async def test_another_view_of_the_product_feeds_the_running_journey(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, item = new_email(), product(new_id("p"))
    wid = await start_browse(stack, email, item, occurred_at=ago(hours=2))
    await time_env.sleep(timedelta(hours=1))
    # Refused as a start (within 7 days), fed to the journey with its key instead.
    assert await view(stack, email, item, occurred_at=ago(hours=1)) == [wid]
    state = await stack.finish(wid)
    # The clock is not restarted: the first email is still 4 hours after the first view.
    assert state.started_at is not None
    assert state.emails[0].at - state.started_at < timedelta(hours=4, minutes=1)
    assert [e.step for e in state.emails] == ["browse_1", "browse_2"]


async def test_one_browse_journey_per_contact_per_7_days(stack: Stack) -> None:
    email = new_email()
    wid = await start_browse(stack, email, product(new_id("p")), occurred_at=ago(days=10))
    await stack.finish(wid)
    # 3 days later (by the events' own times): refused, nothing started.
    assert await view(stack, email, product(new_id("p")), occurred_at=ago(days=7)) == []
    # 8 days after the first: a new journey.
    later = await start_browse(stack, email, product(new_id("p")), occurred_at=ago(days=2))
    assert later != wid


async def test_an_out_of_stock_product_starts_nothing(stack: Stack) -> None:
    assert await view(stack, new_email(), product(new_id("p"), in_stock=False)) == []


async def test_quiet_hours_hold_the_first_email_until_they_end(
    time_env: WorkflowEnvironment, temporal: Client, sqlite_url: str, mailcatcher: MailCatcher
) -> None:
    now = await time_env.get_current_time()
    # Due 4 hours after the view, inside a window from 3 to 6 hours after it.
    window = quiet_window(
        now, "Europe/Lisbon", starts_in=timedelta(hours=3), lasts=timedelta(hours=3)
    )
    async with open_stack(
        time_env,
        temporal,
        sqlite_url,
        mailcatcher,
        STACK_FLOWS,
        settings_overrides={"quiet_hours": window},
    ) as quiet:
        wid = await start_browse(quiet, new_email(), product(new_id("p")))
        state = await quiet.finish(wid)
    assert state.started_at is not None
    first = state.emails[0]
    assert (first.step, first.status) == ("browse_1", "sent")
    end = quiet_window_end(
        now, "Europe/Lisbon", starts_in=timedelta(hours=3), lasts=timedelta(hours=3)
    )
    assert end <= first.at < end + timedelta(minutes=3)
    # Held well past its due time (a clock change in the window moves its end in UTC).
    assert first.at - state.started_at > timedelta(hours=5, minutes=50) + dst_shift(
        state.started_at, end
    )
    assert f"{first.at.astimezone(ZoneInfo('Europe/Lisbon')):%H:%M}" == window.split("-")[1]


async def test_smart_sending_skips_the_first_email_after_another_flows(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, wanted = new_email(), new_id("p")
    wid = await start_browse(stack, email, product(new_id("p")))
    # 3 hours later the contact hears from back in stock (a product they asked for).
    await stack.post(
        product_event(email, product(wanted, in_stock=False), type="back_in_stock_requested")
    )
    await post_products(stack, product(wanted, in_stock=False))
    await time_env.sleep(timedelta(hours=3))
    response = await post_products(stack, product(wanted))
    [told] = response.json()["journeys"]

    state = await stack.finish(wid)
    await stack.finish(told)
    assert state.status == JourneyStatus.COMPLETED
    # browse_1, due an hour after that email: skipped; browse_2, a day later: sent.
    assert [(e.step, e.status, e.reason) for e in state.emails] == [
        ("browse_1", "skipped", "smart_sending"),
        ("browse_2", "sent", None),
    ]


async def test_the_ab_variant_is_the_contacts_own_for_good(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    first = await start_browse(stack, email, product(new_id("p")), occurred_at=ago(days=9))
    state = await stack.finish(first)
    contact_id = state.contact_id
    expected = choose(f"browse_abandonment\x1fbrowse_1\x1f{contact_id}", {"a": 1, "b": 1})
    [row, _] = await stack.messages(first)
    assert (row.step, row.variant, row.template) == (
        "browse_1",
        expected,
        {"a": "browse_1", "b": "browse_1_b"}[expected],
    )
    subject = {
        "a": "Ana, still thinking about the Linen shirt?",
        "b": "The Linen shirt you looked at",
    }
    firsts = [m for m in stack.mail_to(email) if m.message["X-Nudge-Step"] == "browse_1"]
    assert firsts[0].message["Subject"] == subject[expected]
    # Over a week later (and past smart sending's 16 hours), another product: the same variant.
    await time_env.sleep(timedelta(hours=17))
    second = await start_browse(stack, email, product(new_id("p")), occurred_at=ago(days=1))
    again = await stack.finish(second)
    assert again.emails[0].variant == expected
    firsts = [m for m in stack.mail_to(email) if m.message["X-Nudge-Step"] == "browse_1"]
    assert [m.message["Subject"] for m in firsts] == [subject[expected]] * 2
