"""The post-purchase flow on the time-skipping server, through the real API, worker, database
and SMTP server: three weeks of journey in about a second."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.contacts import directory
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import JourneyState, JourneyStatus
from support import (
    Stack,
    cart_event,
    dst_shift,
    new_email,
    new_id,
    quiet_window,
    record_history,
    untracked,
)
from workflows.cart_abandonment import CartAbandonment
from workflows.post_purchase import PostPurchase
from workflows.welcome import Welcome

DAY = timedelta(days=1)
TRACKING = "https://tracking.example.com/parcel/{order}"


# These flows and the cart flow the tests mix in: an order starts the post-purchase journey, a
# cart sends the marketing email that smart sending counts (conftest's `stack` runs them).
STACK_FLOWS = (CartAbandonment, Welcome, PostPurchase)


def placed(
    email: str,
    order_id: str,
    *,
    lines: list[tuple[str, str, str]] | None = None,
    occurred_at: str = "2026-11-23T11:00:00Z",
) -> dict[str, Any]:
    lines = lines or [("p1", "Linen shirt", "49.00")]
    return {
        "id": new_id("evt"),
        "type": "order_placed",
        "occurred_at": occurred_at,
        "contact": {"email": email, "first_name": "Ana", "timezone": "Europe/Lisbon"},
        "order": {
            "id": order_id,
            "currency": "EUR",
            "total": str(sum(float(price) for _, _, price in lines)),
            "lines": [
                {"product_id": pid, "title": title, "price": price, "quantity": 1}
                for pid, title, price in lines
            ],
        },
    }


def shipped(email: str, order_id: str, *, tracking: bool = True) -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": "order_shipped",
        "occurred_at": "2026-11-24T09:00:00Z",
        "contact": {"email": email},
        "order": {
            "id": order_id,
            "tracking_url": TRACKING.format(order=order_id) if tracking else None,
            "carrier": "DHL",
        },
    }


def refunded(email: str, order_id: str) -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": "order_refunded",
        "occurred_at": "2026-11-25T09:00:00Z",
        "contact": {"email": email},
        "order": {"id": order_id},
    }


async def store_without_routing(stack: Stack, event: dict[str, Any]) -> None:
    """Store and apply an event as the API does, without routing it to any journey."""
    parsed = ev.event_adapter.validate_python(event)
    async with stack.sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, parsed.contact)
        await event_log.record_event(session, parsed, contact_id, event)
        await projection.apply_event(session, parsed, contact_id)


async def post(stack: Stack, event: dict[str, Any]) -> list[str]:
    """Post one event; the post-purchase journeys it started or signalled."""
    response = await stack.post(event)
    assert response.status_code == 202, response.text
    return [j for j in response.json()["results"][0]["journeys"] if "-post_purchase-" in j]


async def start(stack: Stack, email: str, order_id: str, **kwargs: Any) -> str:
    [wid] = await post(stack, placed(email, order_id, **kwargs))
    assert wid.endswith(f"-{order_id}")
    return wid


def steps(state: JourneyState) -> list[tuple[str, str, str | None]]:
    return [(e.step, e.status, e.reason) for e in state.emails]


def offsets(state: JourneyState) -> list[timedelta]:
    assert state.started_at is not None
    return [e.at - state.started_at for e in state.emails]


def at(offset: timedelta, expected: timedelta) -> bool:
    return expected <= offset < expected + timedelta(minutes=1)


async def test_order_gets_confirmation_shipping_guide_review_and_cross_sell(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    # Another customer bought the shirt with a scarf: the scarf is what goes with the shirt.
    # Stored directly, not routed: journeys of that customer's would outlive this test.
    shirt, scarf = new_id("p"), new_id("p")
    other = new_email()
    await store_without_routing(
        stack,
        {
            "id": new_id("evt"),
            "type": "product_viewed",
            "occurred_at": "2026-11-20T10:00:00Z",
            "contact": {"email": other},
            "product": {
                "id": scarf,
                "title": "Cotton scarf",
                "url": f"https://shop.example/p/{scarf}",
                "image_url": f"https://shop.example/img/{scarf}.jpg",
                "price": "29.00",
                "currency": "EUR",
            },
        },
    )
    await store_without_routing(
        stack,
        placed(
            other,
            new_id("order"),
            lines=[(shirt, "Linen shirt", "49.00"), (scarf, "Cotton scarf", "29.00")],
        ),
    )
    email, order_id = new_email(), new_id("order")
    wid = await start(stack, email, order_id, lines=[(shirt, "Linen shirt", "49.00")])
    await time_env.sleep(DAY)
    assert await post(stack, shipped(email, order_id)) == [wid]

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [(step, status) for step, status, _ in steps(state)] == [
        ("pp_confirmation", "sent"),
        ("pp_shipped", "sent"),
        ("pp_guide", "sent"),
        ("pp_review", "sent"),
        ("pp_cross_sell", "sent"),
    ]
    # At once; when shipped (a day later); five days, then a week, then another week later.
    for offset, days in zip(offsets(state), (0, 1, 6, 13, 20), strict=True):
        assert at(offset, days * DAY), (offset, days)

    caught = {m.message["X-Nudge-Step"]: m for m in stack.mail_to(email)}
    confirmation, shipping = caught["pp_confirmation"], caught["pp_shipped"]
    assert order_id in str(confirmation.message["Subject"])
    assert "Linen shirt" in (confirmation.html or "") and "€49.00" in (confirmation.html or "")
    tracking = TRACKING.format(order=order_id)
    assert tracking in untracked(shipping.text or "", stack.settings)
    # Transactional: no unsubscribe header or link; the marketing steps have both.
    for step, message in caught.items():
        transactional = step in ("pp_confirmation", "pp_shipped")
        assert (message.message["List-Unsubscribe"] is None) == transactional, step
    rows = {r.step: r for r in await stack.messages(wid)}
    assert rows["pp_confirmation"].transactional and rows["pp_shipped"].transactional
    assert not rows["pp_guide"].transactional
    # The cross-sell: what other customers bought with the shirt.
    assert "Cotton scarf" in (caught["pp_cross_sell"].html or "")


async def test_without_a_shipment_the_story_goes_on_after_two_weeks(stack: Stack) -> None:
    email, order_id = new_email(), new_id("order")
    wid = await start(stack, email, order_id)

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [e.step for e in state.emails] == [
        "pp_confirmation",
        "pp_guide",
        "pp_review",
        "pp_cross_sell",
    ]
    for offset, days in zip(offsets(state), (0, 19, 26, 33), strict=True):
        assert at(offset, days * DAY), (offset, days)


async def test_refund_ends_its_own_orders_journey_only(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, kept, refunded_order = new_email(), new_id("order"), new_id("order")
    kept_wid = await start(stack, email, kept)
    refunded_wid = await start(stack, email, refunded_order)
    await time_env.sleep(DAY)

    # Exit goals reach every open journey of the flow for the contact...
    assert set(await post(stack, refunded(email, refunded_order))) == {kept_wid, refunded_wid}

    # ...but only the refunded order's journey ends.
    state = await stack.finish(refunded_wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "order_refunded")
    assert [e.step for e in state.emails] == ["pp_confirmation"]
    state = await stack.finish(kept_wid)
    assert state.status == JourneyStatus.COMPLETED
    assert [e.step for e in state.emails] == [
        "pp_confirmation",
        "pp_guide",
        "pp_review",
        "pp_cross_sell",
    ]


async def test_refund_after_shipping_stops_the_marketing_steps(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, order_id = new_email(), new_id("order")
    wid = await start(stack, email, order_id)
    await time_env.sleep(DAY)
    await post(stack, shipped(email, order_id, tracking=False))
    await time_env.sleep(3 * DAY)
    assert await post(stack, refunded(email, order_id)) == [wid]

    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "order_refunded")
    assert [e.step for e in state.emails] == ["pp_confirmation", "pp_shipped"]
    # No tracking link: the shipping update says so instead of linking nowhere.
    [shipping] = [m for m in stack.mail_to(email) if m.message["X-Nudge-Step"] == "pp_shipped"]
    assert "no tracking number" in (shipping.text or "")


async def test_an_order_starts_its_journey_once(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, order_id = new_email(), new_id("order")
    wid = await start(stack, email, order_id)
    await stack.finish(wid)

    # The store sends the same order again (an edit, a re-sync): no second journey.
    assert await post(stack, placed(email, order_id)) == []
    assert len(await stack.messages(wid)) == 4
    # Another order is another journey.
    other = await start(stack, email, new_id("order"))
    assert other != wid
    # Let its confirmation go out: a journey ended mid-activity stalls the test server's clock.
    await time_env.sleep(timedelta(minutes=1))
    assert len(await stack.messages(other)) == 1


async def test_smart_sending_skips_a_marketing_step_but_not_a_transactional_one(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, order_id, cart = new_email(), new_id("order"), new_id("cart")
    wid = await start(stack, email, order_id)
    await stack.post(cart_event(email, cart))
    await time_env.sleep(timedelta(hours=3))  # cart_1 (marketing) went out an hour ago
    await post(stack, shipped(email, order_id))
    await stack.post(cart_event(email, cart, lines=[]))  # ends the cart flow
    # Another cart, abandoned just before the guide is due: its first email precedes the guide.
    await time_env.sleep(5 * DAY - timedelta(hours=3))
    other_cart = new_id("cart")
    await stack.post(cart_event(email, other_cart))
    await time_env.sleep(timedelta(hours=2, minutes=30))
    await stack.post(cart_event(email, other_cart, lines=[]))

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert steps(state) == [
        ("pp_confirmation", "sent", None),
        ("pp_shipped", "sent", None),
        ("pp_guide", "skipped", "smart_sending"),
        ("pp_review", "sent", None),
        ("pp_cross_sell", "sent", None),
    ]
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == [
        "pp_confirmation",
        "cart_1",
        "pp_shipped",
        "cart_1",
        "pp_review",
        "pp_cross_sell",
    ]


async def test_ab_variant_of_the_review_request_is_stable_per_contact(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, first, second = new_email(), new_id("order"), new_id("order")
    subjects = {"a": "how is your order", "b": "Would you tell us"}
    first_wid = await start(stack, email, first)
    # A day apart, so smart sending does not skip one journey's step for the other's.
    await time_env.sleep(DAY)
    second_wid = await start(stack, email, second)
    variants = []
    for wid in (first_wid, second_wid):
        await stack.finish(wid)
        [row] = [r for r in await stack.messages(wid) if r.step == "pp_review"]
        assert row.status == "sent" and row.variant in subjects
        assert row.template == {"a": "pp_review", "b": "pp_review_b"}[row.variant]
        assert row.subject is not None and subjects[row.variant] in row.subject
        variants.append(row.variant)
    assert variants[0] == variants[1]


async def test_quiet_hours_hold_marketing_steps_but_not_the_receipts(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> None:
    # Quiet from now until three hours from now, every day, in the contact's timezone.
    now = await time_env.get_current_time()
    window = quiet_window(now, "Europe/Lisbon", starts_in=timedelta(0), lasts=timedelta(hours=3))
    overrides = {"quiet_hours": window}
    async with open_stack(
        time_env, temporal, db_url, mailcatcher, settings_overrides=overrides
    ) as stack:
        email, order_id = new_email(), new_id("order")
        wid = await start(stack, email, order_id)
        await time_env.sleep(timedelta(hours=1))
        await post(stack, shipped(email, order_id))
        state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [e.status for e in state.emails] == ["sent"] * 5
    confirmation, shipping, guide, review, cross_sell = offsets(state)
    # The confirmation and the shipping update are transactional: out at once, window or not.
    assert at(confirmation, timedelta(0)) and at(shipping, timedelta(hours=1))
    # The guide is due 5 days after the shipment, at an hour inside the window: held to its end.
    assert state.started_at is not None
    # The window ends at a fixed local time: a clock change in between moves it in UTC.
    shift = dst_shift(state.started_at, state.started_at + guide)
    assert (
        5 * DAY + timedelta(hours=2, minutes=58) + shift
        <= guide
        <= 5 * DAY + timedelta(hours=3, minutes=2) + shift
    )
    sent = state.started_at + guide
    # A week on, the same UTC moment is an hour earlier in Lisbon after an autumn change:
    # inside the window again, held to its end.
    for offset, days in ((review, 7), (cross_sell, 14)):
        assert at(
            offset, guide + days * DAY + max(dst_shift(sent, sent + days * DAY), timedelta(0))
        )


async def test_fresh_journeys_replay(stack: Stack, time_env: WorkflowEnvironment) -> None:
    """Replays on the current code; `NUDGE_RECORD_HISTORIES=1` records them for test_replay.py."""
    email, order_id = new_email(), new_id("order")
    completed = await start(stack, email, order_id)
    await time_env.sleep(DAY)
    await post(stack, shipped(email, order_id))  # the wait_for's signal, in the history
    await stack.finish(completed)
    await record_history(stack, "post_purchase_completed", completed)

    email, order_id = new_email(), new_id("order")
    exited = await start(stack, email, order_id)
    await time_env.sleep(DAY)
    await post(stack, refunded(email, order_id))
    await stack.finish(exited)
    await record_history(stack, "post_purchase_refunded", exited)
