"""The win-back flow on the time-skipping server, through the real API, worker, segment refresh,
database and SMTP server: a lapsed customer's 60 days of ladder in well under a second."""

from __future__ import annotations

import re
from datetime import timedelta
from zoneinfo import ZoneInfo

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import JourneyStatus
from nudge.storage.models import Coupon, utcnow
from support import (
    Stack,
    cart_event,
    contact_id,
    days_ago,
    dst_shift,
    iso,
    journey_id,
    journeys,
    new_email,
    new_id,
    order_event,
    quiet_window,
    record_history,
    refresh_contact,
    refresh_segments,
    refund_event,
    unsubscribe_event,
)
from workflows.cart_abandonment import CartAbandonment
from workflows.journey import choose
from workflows.winback import Winback

# The cart flow is here for a marketing email shortly before the lapse (smart sending).
STACK_FLOWS = (Winback, CartAbandonment)
LADDER = ["winback_1", "winback_2", "winback_3"]
LISBON = ZoneInfo("Europe/Lisbon")


async def post(stack: Stack, body: dict[str, object]) -> list[str]:
    response = await stack.post(body)
    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    return list(result["journeys"])


async def lapsed(stack: Stack, email: str, *, days: float = 31) -> tuple[int, str]:
    """A customer in Lisbon whose only order is `days` old: lapsed at once, as the order is
    ingested."""
    body = order_event(email, new_id("order"), occurred_at=days_ago(days))
    body["contact"] |= {"first_name": "Ana", "timezone": "Europe/Lisbon"}
    await post(stack, body)
    cid = await contact_id(stack, email)
    return cid, await journey_id(stack, "winback", cid, "lapsed_30")


async def test_a_lapsed_customer_climbs_the_ladder_from_the_hourly_refresh(stack: Stack) -> None:
    email = new_email()
    await post(stack, order_event(email, new_id("order"), occurred_at=days_ago(29)))
    cid = await contact_id(stack, email)
    assert await journeys(stack, "winback", cid) == []  # 29 days: not lapsed yet

    # Two days later the hourly refresh finds the contact lapsed, with no event about them.
    result = await refresh_segments(stack, STACK_FLOWS, utcnow() + timedelta(days=2))
    assert result.segments["lapsed_30"].entered >= 1 and result.journeys_started >= 1
    wid = await journey_id(stack, "winback", cid, "lapsed_30")
    [row] = await journeys(stack, "winback", cid)
    assert row.workflow_id == wid

    state = await stack.finish(wid)

    assert (state.status, state.key) == (JourneyStatus.COMPLETED, "lapsed_30")
    assert [(e.step, e.status) for e in state.emails] == [(s, "sent") for s in LADDER]
    assert state.started_at is not None
    offsets = [e.at - state.started_at for e in state.emails]
    for offset, days in zip(offsets, (0, 30, 60), strict=True):
        assert timedelta(days=days) <= offset < timedelta(days=days, minutes=1)
    caught = stack.mail_to(email)
    assert [m.message["X-Nudge-Step"] for m in caught] == LADDER
    # Growing incentives: each rung its own unique code, worth more than the one before.
    codes = [re.findall(r"NUDGE-[2-9A-HJKMNP-Z]{8}", m.text or "") for m in caught]
    assert all(len(set(found)) == 1 for found in codes)
    async with stack.sessions() as session:
        coupons = [await session.get(Coupon, found[0]) for found in codes]
    assert [(c.contact_id, c.kind, int(c.value)) for c in coupons if c] == [
        (cid, "percent", 10),
        (cid, "percent", 15),
        (cid, "percent", 20),
    ]
    for message, percent in zip(caught, (10, 15, 20), strict=True):
        assert f"{percent}% off" in (message.text or "")
    rows = await stack.messages(wid)
    assert [(r.step, r.status) for r in rows] == [(s, "sent") for s in LADDER]
    # The A/B'd first rung: the contact's own variant, recorded, and its subject sent.
    variant = choose(f"winback\x1fwinback_1\x1f{cid}", {"a": 50, "b": 50})
    assert (rows[0].variant, state.emails[0].variant) == (variant, variant)
    assert rows[0].template == {"a": "winback_1", "b": "winback_1_b"}[variant]
    subject = {"a": "It has been a while", "b": "10% off to welcome you back"}[variant]
    assert caught[0].message["Subject"].startswith(subject)
    assert rows[1].variant is None and rows[2].variant is None
    await record_history(stack, "winback_completed", wid)


async def test_an_order_ends_it_wherever_it_waits(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    _, wid = await lapsed(stack, email)
    await time_env.sleep(timedelta(days=31))  # winback_2 is out, winback_3 not yet
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == LADDER[:2]

    assert wid in await post(stack, order_event(email, new_id("order"), occurred_at=iso(utcnow())))

    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "order_placed")
    assert [e.step for e in state.emails] == LADDER[:2]
    await time_env.sleep(timedelta(days=40))
    assert len(stack.mail_to(email)) == 2
    await record_history(stack, "winback_converted", wid)


async def test_an_order_that_never_reached_the_journey_still_stops_it(stack: Stack) -> None:
    """`no_order_since_start` re-checks the database before each rung."""
    email = new_email()
    cid, wid = await lapsed(stack, email)
    await stack.sent(wid, "winback_1")  # the first rung goes out at once, before the order
    # Stored and applied but never routed (the API died before signalling), placed after the
    # journey started (on the test server's clock, ahead of the wall clock by skipped time).
    placed = await stack.env.get_current_time() + timedelta(days=1)
    order = ev.event_adapter.validate_python(
        order_event(email, new_id("order"), occurred_at=iso(placed))
    )
    async with stack.sessions.begin() as session:
        await event_log.record_event(session, order, cid, {})
        await projection.apply_event(session, order, cid)

    state = await stack.finish(wid)

    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "converted")
    rows = await stack.messages(wid)
    assert [(r.step, r.status, r.reason) for r in rows] == [
        ("winback_1", "sent", None),
        ("winback_2", "skipped", "converted"),
    ]
    assert len(stack.mail_to(email)) == 1


async def test_unsubscribing_ends_it(stack: Stack, time_env: WorkflowEnvironment) -> None:
    email = new_email()
    _, wid = await lapsed(stack, email)
    await time_env.sleep(timedelta(days=1))
    assert wid in await post(stack, unsubscribe_event(email))
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "customer_unsubscribed")
    assert [e.step for e in state.emails] == ["winback_1"]


async def test_a_recent_marketing_email_skips_a_rung_and_the_ladder_goes_on(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    """Smart sending: the cart reminder went out minutes before the contact lapsed."""
    email, token = new_email(), new_id("cart")
    await post(stack, cart_event(email, token))
    await time_env.sleep(timedelta(hours=2, minutes=5))
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["cart_1"]

    _, wid = await lapsed(stack, email, days=45)  # an old order, reported late: lapsed at once
    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [(e.step, e.status, e.reason) for e in state.emails] == [
        ("winback_1", "skipped", "smart_sending"),
        ("winback_2", "sent", None),
        ("winback_3", "sent", None),
    ]
    steps = [m.message["X-Nudge-Step"] for m in stack.mail_to(email)]
    assert "winback_1" not in steps and steps[-2:] == ["winback_2", "winback_3"]


async def test_quiet_hours_hold_the_first_rung_until_they_end(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> None:
    now = await time_env.get_current_time()
    window = quiet_window(
        now, "Europe/Lisbon", starts_in=-timedelta(minutes=30), lasts=timedelta(hours=3)
    )
    async with open_stack(
        time_env,
        temporal,
        db_url,
        mailcatcher,
        STACK_FLOWS,
        settings_overrides={"quiet_hours": window},
    ) as quiet:
        _, wid = await lapsed(quiet, new_email())  # lapses inside the window
        state = await quiet.finish(wid)

    assert state.status == JourneyStatus.COMPLETED and state.started_at is not None
    assert [(e.step, e.status) for e in state.emails] == [(s, "sent") for s in LADDER]
    # Due at once, held (not dropped) and sent as the window ends; the ladder keeps its rhythm.
    first = state.emails[0].at
    # A window that spans a daylight-saving change is an hour longer (autumn) or shorter.
    shift = dst_shift(state.started_at, first)
    assert (
        timedelta(hours=2) + shift
        < first - state.started_at
        < timedelta(hours=2, minutes=35) + shift
    )
    assert f"{first.astimezone(LISBON):%H:%M}" == window.split("-")[1]
    for email, days in zip(state.emails[1:], (30, 60), strict=True):
        # Up to an hour later: when a daylight-saving change falls in between (the test
        # server's clock is wherever earlier tests left it), the same UTC moment is an hour
        # earlier in Lisbon, inside the window again, and held to its end.
        assert timedelta(days=days) <= email.at - first < timedelta(days=days, hours=1, minutes=5)


async def test_a_second_lapse_gets_the_ladder_again_but_a_refund_flap_does_not(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    cid, wid = await lapsed(stack, email, days=40)
    await time_env.sleep(timedelta(hours=1))
    # Won back: the order converts the journey and takes the contact out of `lapsed_30`.
    order_id = new_id("order")
    await post(stack, order_event(email, order_id, occurred_at=iso(utcnow())))
    assert (await stack.finish(wid)).status == JourneyStatus.CONVERTED

    # Refunded the next day: the old order is the last one again and the contact re-enters
    # `lapsed_30` at once. Not a new lapse: no second ladder, no second 10 % code.
    assert await post(stack, refund_event(email, order_id)) == []
    assert len(await journeys(stack, "winback", cid)) == 1

    # A real second lapse: bought again, then 31 days without an order.
    await post(stack, order_event(email, new_id("order"), occurred_at=iso(utcnow())))
    assert await refresh_contact(stack, STACK_FLOWS, cid, utcnow() + timedelta(days=31)) == [wid]
    first_run, second_run = await journeys(stack, "winback", cid)
    assert second_run.workflow_id == wid and second_run.run_id != first_run.run_id
    state = await stack.finish(wid)
    assert [e.step for e in state.emails] == LADDER
    # The A/B variant is the contact's own: the second lapse gets the first one's subject.
    firsts = [r for r in await stack.messages(wid) if r.step == "winback_1"]
    assert len(firsts) == 2 and firsts[0].variant == firsts[1].variant is not None
