"""The VIP / loyalty flow on the time-skipping server, through the real API (orders enter the
`one_time_buyers` and `vip` segments as they are ingested), worker, database and SMTP server."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.commerce import loyalty
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import JourneyStatus
from nudge.storage.models import Coupon
from support import (
    Stack,
    cart_event,
    contact_id,
    dst_shift,
    journey_id,
    journeys,
    new_email,
    new_id,
    order_event,
    quiet_window,
    record_history,
    refund_event,
    unsubscribe_event,
)
from workflows.cart_abandonment import CartAbandonment
from workflows.journey import choose
from workflows.vip import Vip

STACK_FLOWS = (Vip, CartAbandonment)
VIP_STEPS = ["vip_1", "vip_2", "vip_3"]
LISBON = ZoneInfo("Europe/Lisbon")


async def post(stack: Stack, body: dict[str, Any]) -> list[str]:
    response = await stack.post(body)
    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    return list(result["journeys"])


def order(email: str, order_id: str | None = None, total: str = "49.00") -> dict[str, Any]:
    body = order_event(email, order_id or new_id("order"))
    body["contact"] |= {"first_name": "Ana", "timezone": "Europe/Lisbon"}
    body["order"]["total"] = body["order"]["lines"][0]["price"] = total
    return body


def codes(text: str | None) -> set[str]:
    return set(re.findall(r"NUDGE-[2-9A-HJKMNP-Z]{8}", text or ""))


async def test_a_third_order_makes_a_vip_who_gets_thanks_early_access_and_points(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    [first] = await post(stack, order(email))  # one order: the second-purchase journey
    await post(stack, order(email))  # two: it converts
    [vip] = await post(stack, order(email))  # three: a VIP
    cid = await contact_id(stack, email)
    assert (first, vip) == (
        await journey_id(stack, "vip", cid, "one_time_buyers"),
        await journey_id(stack, "vip", cid, "vip"),
    )
    second_purchase = await stack.finish(first)
    assert (second_purchase.status, second_purchase.emails) == (JourneyStatus.CONVERTED, [])

    await time_env.sleep(timedelta(days=1))
    await post(stack, order(email))  # a VIP ordering again does not end their thank-you
    state = await stack.finish(vip)

    assert (state.status, state.exit_reason) == (JourneyStatus.COMPLETED, None)
    assert [(e.step, e.status) for e in state.emails] == [(s, "sent") for s in VIP_STEPS]
    assert state.started_at is not None
    offsets = [e.at - state.started_at for e in state.emails]
    for offset, days in zip(offsets, (0, 3, 10), strict=True):
        assert timedelta(days=days) <= offset < timedelta(days=days, minutes=1)
    caught = stack.mail_to(email)
    assert [m.message["X-Nudge-Step"] for m in caught] == VIP_STEPS
    # The perk: a code of their own worth the VIP percentage.
    [code] = codes(caught[0].text)
    async with stack.sessions() as session:
        coupon = await session.get(Coupon, code)
        status = await loyalty.status(session, cid, stack.settings)
    assert coupon is not None and coupon.contact_id == cid
    assert int(coupon.value) == stack.settings.coupon_vip_percent
    assert f"{stack.settings.coupon_vip_percent}% off" in (caught[0].text or "")
    # Points balance and tier, as the ledger has them after four orders.
    assert status.points > 0 and status.tier
    assert f"You have {status.points:,} points" in (caught[2].text or "")
    assert status.tier.title() in caught[2].message["Subject"]
    # The A/B'd thank-you: the contact's own variant, recorded, and its subject sent.
    rows = await stack.messages(vip)
    variant = choose(f"vip\x1fvip_1\x1f{cid}", {"a": 50, "b": 50})
    assert (rows[0].variant, state.emails[0].variant) == (variant, variant)
    assert rows[0].template == {"a": "vip_1", "b": "vip_1_b"}[variant]
    subject = {"a": "Thank you for coming back", "b": "You are one of our best customers"}
    assert caught[0].message["Subject"].startswith(subject[variant])
    await record_history(stack, "vip_completed", vip)


async def test_a_one_time_buyer_gets_the_second_purchase_nudge_a_week_later(
    stack: Stack,
) -> None:
    email = new_email()
    [wid] = await post(stack, order(email))
    state = await stack.finish(wid)
    assert (state.status, state.key) == (JourneyStatus.COMPLETED, "one_time_buyers")
    assert [(e.step, e.status) for e in state.emails] == [("second_purchase_1", "sent")]
    assert state.started_at is not None
    offset = state.emails[0].at - state.started_at
    assert timedelta(days=7) <= offset < timedelta(days=7, minutes=1)
    [mail] = stack.mail_to(email)
    [code] = codes(mail.text)
    async with stack.sessions() as session:
        coupon = await session.get(Coupon, code)
    assert coupon is not None and int(coupon.value) == stack.settings.coupon_percent
    await record_history(stack, "vip_second_purchase_completed", wid)


async def test_a_second_order_ends_the_nudge(stack: Stack, time_env: WorkflowEnvironment) -> None:
    email = new_email()
    [wid] = await post(stack, order(email))
    await time_env.sleep(timedelta(days=2))
    assert wid in await post(stack, order(email))
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason, state.emails) == (
        JourneyStatus.CONVERTED,
        "order_placed",
        [],
    )
    assert stack.mail_to(email) == []
    await record_history(stack, "vip_second_purchase_converted", wid)


async def test_a_second_order_that_never_reached_the_journey_still_ends_it(stack: Stack) -> None:
    """The `one_order` filter counts the orders in the database before the nudge."""
    email = new_email()
    [wid] = await post(stack, order(email))
    cid = await contact_id(stack, email)
    second = ev.event_adapter.validate_python(order(email))
    async with stack.sessions.begin() as session:  # stored and applied, never routed
        await event_log.record_event(session, second, cid, {})
        await projection.apply_event(session, second, cid)

    state = await stack.finish(wid)

    assert (state.status, state.exit_reason) == (JourneyStatus.CONVERTED, "converted")
    [row] = await stack.messages(wid)
    assert (row.step, row.status, row.reason) == ("second_purchase_1", "skipped", "converted")
    assert stack.mail_to(email) == []


async def test_one_big_first_order_makes_a_vip_who_gets_no_second_purchase_nudge(
    stack: Stack,
) -> None:
    email = new_email()
    started = await post(stack, order(email, total="600.00"))  # over the VIP spend
    cid = await contact_id(stack, email)
    nudge_id = await journey_id(stack, "vip", cid, "one_time_buyers")
    thanks_id = await journey_id(stack, "vip", cid, "vip")
    assert sorted(started) == [nudge_id, thanks_id]
    nudge = await stack.finish(nudge_id)
    assert (nudge.status, nudge.exit_reason, nudge.emails) == (JourneyStatus.COMPLETED, "vip", [])
    thanks = await stack.finish(thanks_id)
    assert [e.step for e in thanks.emails] == VIP_STEPS


async def test_unsubscribing_ends_it(stack: Stack, time_env: WorkflowEnvironment) -> None:
    email = new_email()
    await post(stack, order(email, total="600.00"))
    wid = await journey_id(stack, "vip", await contact_id(stack, email), "vip")
    await time_env.sleep(timedelta(days=1))
    assert wid in await post(stack, unsubscribe_event(email))
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "customer_unsubscribed")
    assert [e.step for e in state.emails] == ["vip_1"]


async def test_a_recent_marketing_email_skips_the_thank_you_and_the_rest_goes_on(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    """Smart sending: the cart reminder went out minutes before the order that made a VIP."""
    email, token = new_email(), new_id("cart")
    await post(stack, cart_event(email, token))
    await time_env.sleep(timedelta(hours=2, minutes=5))
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["cart_1"]

    await post(stack, order(email, total="600.00"))
    state = await stack.finish(
        await journey_id(stack, "vip", await contact_id(stack, email), "vip")
    )

    assert [(e.step, e.status, e.reason) for e in state.emails] == [
        ("vip_1", "skipped", "smart_sending"),
        ("vip_2", "sent", None),
        ("vip_3", "sent", None),
    ]


async def test_quiet_hours_hold_the_thank_you_until_they_end(
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
        email = new_email()
        await post(quiet, order(email, total="600.00"))  # a VIP inside the window
        state = await quiet.finish(
            await journey_id(quiet, "vip", await contact_id(quiet, email), "vip")
        )

    assert state.started_at is not None
    assert [(e.step, e.status) for e in state.emails] == [(s, "sent") for s in VIP_STEPS]
    # Due at once, held (not dropped) and sent as the window ends; the rest keeps its rhythm.
    first = state.emails[0].at
    # A window that spans a daylight-saving change is an hour longer (autumn) or shorter.
    shift = dst_shift(state.started_at, first)
    assert (
        timedelta(hours=2) + shift
        < first - state.started_at
        < timedelta(hours=2, minutes=35) + shift
    )
    assert f"{first.astimezone(LISBON):%H:%M}" == window.split("-")[1]
    # (Up to an hour more when a daylight-saving change falls in between: held again.)
    assert timedelta(days=3) <= state.emails[1].at - first < timedelta(days=3, hours=1, minutes=5)


async def test_each_segment_starts_it_once_ever(stack: Stack) -> None:
    email = new_email()
    first_order = new_id("order")
    [wid] = await post(stack, order(email, first_order))
    await stack.finish(wid)
    cid = await contact_id(stack, email)
    # Refunded (no longer a buyer), then a new first order: a one-time buyer again, but the
    # nudge is not sent twice.
    await post(stack, refund_event(email, first_order))
    assert await post(stack, order(email)) == []
    [row] = await journeys(stack, "vip", cid)
    assert row.workflow_id == wid
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["second_purchase_1"]
