"""The welcome series on the time-skipping server, through the real API, worker, database and
SMTP server: a week of journey in about a second."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import MailCatcher
from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus
from nudge.journeys.search_attributes import start_search_attributes
from nudge.mail import context
from nudge.storage.models import Coupon
from support import (
    Stack,
    cart_event,
    dst_shift,
    new_email,
    new_id,
    order_event,
    quiet_window,
    record_history,
)
from workflows.cart_abandonment import CartAbandonment
from workflows.post_purchase import PostPurchase
from workflows.welcome import Welcome

CODE = re.compile(r"NUDGE-[2-9A-HJKMNP-Z]{8}")
DAY = timedelta(days=1)


# These flows and the cart flow the tests mix in: an order starts the post-purchase journey, a
# cart sends the marketing email that smart sending counts (conftest's `stack` runs them).
STACK_FLOWS = (CartAbandonment, Welcome, PostPurchase)


def subscribed(email: str, *, occurred_at: str = "2026-11-23T10:00:00Z") -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": "customer_subscribed",
        "occurred_at": occurred_at,
        "contact": {"email": email, "first_name": "Ana", "timezone": "Europe/Lisbon"},
        "source": "footer_form",
    }


async def subscribe(stack: Stack, email: str, **kwargs: Any) -> str:
    response = await stack.post(subscribed(email, **kwargs))
    assert response.status_code == 202, response.text
    [wid] = [j for j in response.json()["results"][0]["journeys"] if "-welcome-" in j]
    return str(wid)


def steps(state: JourneyState) -> list[tuple[str, str, str | None]]:
    return [(e.step, e.status, e.reason) for e in state.emails]


def offsets(state: JourneyState) -> list[timedelta]:
    assert state.started_at is not None
    return [e.at - state.started_at for e in state.emails]


async def test_subscriber_gets_four_emails_at_their_offsets(stack: Stack) -> None:
    email = new_email()
    wid = await subscribe(stack, email)
    assert wid.endswith("-welcome")

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert steps(state) == [
        ("welcome_1", "sent", None),
        ("welcome_2", "sent", None),
        ("welcome_3", "sent", None),
        ("welcome_4", "sent", None),
    ]
    # At once, a day later, two days after that, three days after that.
    for offset, days in zip(offsets(state), (0, 1, 3, 6), strict=True):
        assert days * DAY <= offset < days * DAY + timedelta(minutes=1)

    caught = stack.mail_to(email)
    assert [m.message["X-Nudge-Step"] for m in caught] == [
        "welcome_1",
        "welcome_2",
        "welcome_3",
        "welcome_4",
    ]
    assert all(m.message["List-Unsubscribe"] for m in caught)
    assert "Welcome, Ana" in (caught[0].html or "")

    # The first-purchase gift: a code of the contact's own, worth the flow's 15 %, not the
    # store's usual 10 %.
    text = caught[1].text or ""
    [code] = set(CODE.findall(text))
    assert "15% off your first order" in text
    rows = await stack.messages(wid)
    async with stack.sessions() as session:
        coupon = await session.get(Coupon, code)
        expected = await context.recommendations(session, state.contact_id, [], datetime.now(UTC))
    assert coupon is not None
    assert (coupon.contact_id, coupon.kind, coupon.value) == (
        state.contact_id,
        "percent",
        Decimal(15),
    )
    assert coupon.source == f"{wid}:{rows[1].trigger_event_id}:welcome_2"
    # Personalised recommendations: what the recommender picks for this contact.
    for product in expected:
        assert product["title"] in (caught[2].html or "")


async def test_order_converts_and_ends_the_series(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    wid = await subscribe(stack, email)
    await time_env.sleep(timedelta(hours=3))
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["welcome_1"]

    response = await stack.post(order_event(email, new_id("order")))
    assert wid in response.json()["results"][0]["journeys"]

    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "order_placed")
    assert [e.step for e in state.emails] == ["welcome_1"]
    await time_env.sleep(timedelta(days=7))
    # The buyer got the order confirmation instead, and no discount.
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == [
        "welcome_1",
        "pp_confirmation",
    ]


async def test_order_that_never_reached_the_journey_still_stops_the_discount(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    """welcome_2 re-checks the database: an order whose signal was lost still converts."""
    from nudge.contacts import directory
    from nudge.events import log as event_log
    from nudge.events import schemas as ev
    from nudge.intake import projection

    email = new_email()
    wid = await subscribe(stack, email)
    # welcome_1 goes out at once: stored before it, the order would stop it too.
    await stack.sent(wid, "welcome_1")
    # After the journey's start on the test server's clock (far ahead of the wall clock).
    placed = await time_env.get_current_time() + timedelta(hours=1)
    order = order_event(email, new_id("order"), occurred_at=placed.isoformat())
    parsed = ev.event_adapter.validate_python(order)
    async with stack.sessions.begin() as session:  # stored and applied, never routed
        contact_id = await directory.upsert_contact(session, parsed.contact)
        await event_log.record_event(session, parsed, contact_id, order)
        await projection.apply_event(session, parsed, contact_id)

    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "converted")
    assert steps(state) == [("welcome_1", "sent", None), ("welcome_2", "skipped", "converted")]
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["welcome_1"]


async def test_a_customer_who_already_ordered_gets_no_first_purchase_discount(
    stack: Stack,
) -> None:
    email = new_email()
    await stack.post(order_event(email, new_id("order"), occurred_at="2026-11-20T10:00:00Z"))
    wid = await subscribe(stack, email)

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert steps(state) == [
        ("welcome_1", "sent", None),
        ("welcome_2", "skipped", "not_first_purchase"),
        ("welcome_3", "sent", None),
        ("welcome_4", "sent", None),
    ]
    async with stack.sessions() as session:
        coupons = await session.scalars(select(Coupon).where(Coupon.contact_id == state.contact_id))
        assert list(coupons) == []
    sent = [m for m in stack.mail_to(email) if m.message["X-Nudge-Flow"] == "welcome"]
    assert [m.message["X-Nudge-Step"] for m in sent] == ["welcome_1", "welcome_3", "welcome_4"]


async def test_unsubscribing_ends_the_series(stack: Stack, time_env: WorkflowEnvironment) -> None:
    email = new_email()
    wid = await subscribe(stack, email)
    await time_env.sleep(timedelta(days=2))
    response = await stack.post(
        {
            "id": new_id("evt"),
            "type": "customer_unsubscribed",
            "occurred_at": "2026-11-25T10:00:00Z",
            "contact": {"email": email},
        }
    )
    assert wid in response.json()["results"][0]["journeys"]

    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "customer_unsubscribed")
    assert [e.step for e in state.emails] == ["welcome_1", "welcome_2"]
    assert len(stack.mail_to(email)) == 2


async def test_a_contact_is_welcomed_only_once(stack: Stack, time_env: WorkflowEnvironment) -> None:
    email = new_email()
    wid = await subscribe(stack, email)
    await stack.finish(wid)

    response = await stack.post(subscribed(email, occurred_at="2027-03-01T10:00:00Z"))
    assert response.status_code == 202
    assert response.json()["results"][0]["journeys"] == []
    await time_env.sleep(timedelta(days=7))
    assert len(stack.mail_to(email)) == 4
    assert len(await stack.messages(wid)) == 4


async def test_smart_sending_skips_the_welcome_after_a_recent_marketing_email(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, token = new_email(), new_id("cart")
    await stack.post(cart_event(email, token))
    await time_env.sleep(timedelta(hours=3))
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["cart_1"]
    await stack.post(cart_event(email, token, lines=[]))  # no more cart emails after this one

    wid = await subscribe(stack, email)
    state = await stack.finish(wid)

    # cart_1 went out an hour before: welcome_1 is skipped and the series moves on.
    assert state.status == JourneyStatus.COMPLETED
    assert steps(state)[:2] == [
        ("welcome_1", "skipped", "smart_sending"),
        ("welcome_2", "sent", None),
    ]
    welcome = [m for m in stack.mail_to(email) if m.message["X-Nudge-Flow"] == "welcome"]
    assert [m.message["X-Nudge-Step"] for m in welcome] == ["welcome_2", "welcome_3", "welcome_4"]


async def test_ab_variant_of_the_first_email_is_recorded_and_stable_per_contact(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    subjects = {"a": "Welcome to", "b": "nice to meet you"}
    seen: dict[str, int] = {}
    # New contacts until both variants have turned up (each has an even chance).
    for _ in range(20):
        email = new_email()
        wid = await subscribe(stack, email)
        await time_env.sleep(timedelta(minutes=5))
        [row] = await stack.messages(wid)
        assert row.variant in subjects and row.status == "sent"
        assert row.template == {"a": "welcome_1", "b": "welcome_1_b"}[row.variant]
        [first] = stack.mail_to(email)
        assert subjects[row.variant] in str(first.message["Subject"])
        seen.setdefault(row.variant, row.contact_id)
        if len(seen) == 2:
            break
    assert set(seen) == {"a", "b"}

    # The same contact in another run of the flow (started here directly, past the API's
    # once-only rule) gets the same variant again.
    for variant, contact_id in seen.items():
        again = f"welcome-{contact_id}-again"
        handle = await stack.temporal.start_workflow(
            "welcome",
            JourneyInput(
                flow="welcome",
                contact_id=contact_id,
                key="again",
                trigger_event_id=new_id("evt"),
                quiet_hours="",
            ),
            id=again,
            task_queue=stack.settings.task_queue,
            search_attributes=start_search_attributes("welcome", contact_id),
        )
        await time_env.sleep(timedelta(minutes=5))
        await handle.terminate(reason="test over")
        [row] = await stack.messages(again)
        assert row.variant == variant


async def test_quiet_hours_hold_the_welcome_until_the_window_ends(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> None:
    # Quiet from now until three hours from now, in the contact's timezone.
    now = await time_env.get_current_time()
    window = quiet_window(now, "Europe/Lisbon", starts_in=timedelta(0), lasts=timedelta(hours=3))
    overrides = {"quiet_hours": window}
    async with open_stack(
        time_env, temporal, db_url, mailcatcher, settings_overrides=overrides
    ) as stack:
        email = new_email()
        wid = await subscribe(stack, email)
        await time_env.sleep(timedelta(hours=2))
        assert stack.mail_to(email) == []  # held, not dropped
        state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [e.status for e in state.emails] == ["sent"] * 4
    held = offsets(state)
    # Sent when the window ends; the next steps, a day or more later, fall outside it.
    assert state.started_at is not None
    # A window that spans a daylight-saving change is an hour longer (autumn) or shorter.
    shift = dst_shift(state.started_at, state.started_at + held[0])
    assert (
        timedelta(hours=2, minutes=58) + shift <= held[0] <= timedelta(hours=3, minutes=2) + shift
    )
    first = state.started_at + held[0]
    for offset, days in zip(held[1:], (1, 3, 6), strict=True):
        # Across an autumn clock change the same UTC moment is an hour earlier in Lisbon,
        # inside the window again: held to its end.
        due = held[0] + days * DAY + max(dst_shift(first, first + days * DAY), timedelta(0))
        assert due <= offset < due + timedelta(minutes=1)


async def test_fresh_journeys_replay(stack: Stack, time_env: WorkflowEnvironment) -> None:
    """Replays on the current code; `NUDGE_RECORD_HISTORIES=1` records them for test_replay.py."""
    completed = await subscribe(stack, new_email())
    await stack.finish(completed)
    await record_history(stack, "welcome_completed", completed)

    email = new_email()
    converted = await subscribe(stack, email)
    await time_env.sleep(timedelta(days=2))
    await stack.post(order_event(email, new_id("order")))
    await stack.finish(converted)
    await record_history(stack, "welcome_converted", converted)
    # The order's confirmation goes out before the test ends (its journey is left waiting).
    await time_env.sleep(timedelta(minutes=1))
