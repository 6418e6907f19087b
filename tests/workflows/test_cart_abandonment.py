"""The cart abandonment flow on the time-skipping server, through the real API, worker,
database and SMTP server: days of journey in well under a second each."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import MailCatcher
from nudge.journeys.contracts import JourneyState, JourneyStatus
from nudge.storage.models import Coupon
from support import (
    Stack,
    cart_event,
    dst_shift,
    new_email,
    new_id,
    order_event,
    quiet_window,
    quiet_window_end,
    untracked,
)


async def start_cart(stack: Stack, email: str, token: str) -> str:
    response = await stack.post(cart_event(email, token))
    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    [workflow_id] = result["journeys"]
    return str(workflow_id)


async def finish(stack: Stack, workflow_id: str) -> JourneyState:
    return await stack.finish(workflow_id)


async def test_abandoned_cart_gets_three_emails_at_their_offsets(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    wid = await start_cart(stack, email, token)

    state = await finish(stack, wid)

    assert state.status == JourneyStatus.COMPLETED
    assert [e.step for e in state.emails] == ["cart_1", "cart_2", "cart_3"]
    assert all(e.status == "sent" for e in state.emails)
    assert state.started_at is not None
    offsets = [e.at - state.started_at for e in state.emails]
    # 2 hours, then the next day, then 24 hours later (activity time is a few seconds at most).
    for offset, expected in zip(offsets, (2, 26, 50), strict=True):
        assert timedelta(hours=expected) <= offset < timedelta(hours=expected, minutes=1)

    caught = stack.mail_to(email)
    assert [m.message["X-Nudge-Step"] for m in caught] == ["cart_1", "cart_2", "cart_3"]
    assert {m.message_id for m in caught} == {e.message_id for e in state.emails}
    first = caught[0]
    assert first.html is not None and first.text is not None
    assert "Linen shirt" in first.html and "€49.00" in first.html
    assert 'src="https://shop.example/img/p1.jpg"' in first.html
    # Through click tracking (nudge/mail/tracking.py), to the cart's checkout.
    assert f"https://shop.example/checkout/{token}" in untracked(first.text, stack.settings)

    rows = await stack.messages(wid)
    assert [(r.step, r.status, r.attempts) for r in rows] == [
        ("cart_1", "sent", 1),
        ("cart_2", "sent", 1),
        ("cart_3", "sent", 1),
    ]
    # The incentive is a code of this contact's own, issued for this journey's third step.
    [code] = set(re.findall(r"NUDGE-[2-9A-HJKMNP-Z]{8}", caught[2].text or ""))
    async with stack.sessions() as session:
        coupon = await session.get(Coupon, code)
    assert coupon is not None
    assert (coupon.contact_id, coupon.source) == (
        state.contact_id,
        f"{wid}:{rows[2].trigger_event_id}:cart_3",
    )


async def test_order_after_first_email_converts_and_stops(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, token = new_email(), new_id("cart")
    wid = await start_cart(stack, email, token)
    await time_env.sleep(timedelta(hours=3))
    assert len(stack.mail_to(email)) == 1

    response = await stack.post(order_event(email, new_id("order"), cart_token=token))
    assert response.status_code == 202
    assert response.json()["results"][0]["journeys"] == [wid]

    state = await finish(stack, wid)
    assert state.status == JourneyStatus.CONVERTED
    assert state.exit_reason == "order_placed"
    assert [e.step for e in state.emails] == ["cart_1"]
    await time_env.sleep(timedelta(days=3))
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["cart_1"]
    assert [r.step for r in await stack.messages(wid)] == ["cart_1"]


async def test_order_that_never_reached_the_journey_still_stops_it(stack: Stack) -> None:
    """The send re-checks the database: an order whose signal was lost still ends the journey."""
    email, token = new_email(), new_id("cart")
    wid = await start_cart(stack, email, token)
    order = order_event(email, new_id("order"), cart_token=token)
    # Stored and applied, but never routed to Temporal (as if the API died before signalling).
    from nudge.contacts import directory
    from nudge.events import log as event_log
    from nudge.events import schemas as ev
    from nudge.intake import projection

    parsed = ev.event_adapter.validate_python(order)
    async with stack.sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, parsed.contact)
        await event_log.record_event(session, parsed, contact_id, order)
        await projection.apply_event(session, parsed, contact_id)

    state = await finish(stack, wid)
    assert state.status == JourneyStatus.CONVERTED
    assert state.exit_reason == "converted"
    assert stack.mail_to(email) == []
    [row] = await stack.messages(wid)
    assert (row.step, row.status, row.reason) == ("cart_1", "skipped", "converted")


async def test_cart_update_restarts_the_clock_in_one_journey(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email, token = new_email(), new_id("cart")
    wid = await start_cart(stack, email, token)
    await time_env.sleep(timedelta(hours=1, minutes=30))
    assert await start_cart(stack, email, token) == wid

    state = await finish(stack, wid)
    assert state.started_at is not None
    first = state.emails[0].at - state.started_at
    assert timedelta(hours=3, minutes=30) <= first < timedelta(hours=3, minutes=31)
    assert [e.step for e in state.emails] == ["cart_1", "cart_2", "cart_3"]
    response = await stack.http.get(
        f"/v1/contacts/{email}/journeys", headers={"Authorization": "Bearer test-key"}
    )
    journeys = response.json()["journeys"]
    assert [(j["workflow_id"], j["flow"]) for j in journeys] == [(wid, "cart_abandonment")]
    assert (journeys[0]["status"], journeys[0]["step"]) == ("completed", "cart_3")


async def test_emptied_cart_ends_the_journey(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    wid = await start_cart(stack, email, token)
    response = await stack.post(cart_event(email, token, lines=[]))
    assert response.json()["results"][0]["journeys"] == [wid]
    state = await finish(stack, wid)
    assert (state.status, state.exit_reason, state.emails) == (
        JourneyStatus.EXITED,
        "cart_emptied",
        [],
    )


async def test_transient_smtp_failure_is_retried_into_exactly_one_email(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    stack.mail.fail_next(1, code=451)
    wid = await start_cart(stack, email, token)
    state = await finish(stack, wid)
    assert [e.status for e in state.emails] == ["sent", "sent", "sent"]
    assert len(stack.mail_to(email)) == 3
    rows = await stack.messages(wid)
    assert [(r.step, r.attempts) for r in rows] == [("cart_1", 2), ("cart_2", 1), ("cart_3", 1)]


async def test_permanent_smtp_rejection_is_logged_failed_and_not_retried(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    stack.mail.fail_next(1, code=550, text="No such user")
    wid = await start_cart(stack, email, token)
    state = await finish(stack, wid)
    assert [e.status for e in state.emails] == ["failed", "sent", "sent"]
    rows = await stack.messages(wid)
    assert (rows[0].status, rows[0].reason, rows[0].attempts) == ("failed", "smtp_550", 1)
    assert len(stack.mail_to(email)) == 2


async def test_returning_customer_gets_the_welcome_back_first_email(stack: Stack) -> None:
    email = new_email()
    await stack.post(order_event(email, new_id("order")))
    wid = await start_cart(stack, email, new_id("cart"))

    state = await finish(stack, wid)

    rows = await stack.messages(wid)
    assert (rows[0].step, rows[0].template) == ("cart_1", "cart_1_returning")
    [first] = [m for m in stack.mail_to(email) if m.message["X-Nudge-Step"] == "cart_1"]
    assert first.message["Subject"].startswith("Welcome back")
    assert state.status == JourneyStatus.COMPLETED


async def test_cart_2_subject_test_gives_a_contact_the_same_variant_every_time(
    stack: Stack,
) -> None:
    email = new_email()
    first = await start_cart(stack, email, new_id("cart"))
    one = await finish(stack, first)
    second = await start_cart(stack, email, new_id("cart"))
    two = await finish(stack, second)

    [variant] = {e.variant for e in one.emails if e.step == "cart_2"}
    assert variant in {"a", "b"}
    assert [e.variant for e in two.emails if e.step == "cart_2"] == [variant]
    rows = await stack.messages(first)
    assert [(r.variant, r.template) for r in rows if r.step == "cart_2"] == [
        (variant, {"a": "cart_2", "b": "cart_2_b"}[variant])
    ]


async def test_a_cart_gets_one_journey_only(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    wid = await start_cart(stack, email, token)
    await finish(stack, wid)

    # Touched again after its journey ended: re-entry is per cart, so no second journey.
    response = await stack.post(cart_event(email, token))
    assert response.status_code == 202
    assert response.json()["results"][0]["journeys"] == []
    assert len(await stack.messages(wid)) == 3


async def test_quiet_hours_hold_the_first_email_until_morning(
    time_env: WorkflowEnvironment, temporal: Client, sqlite_url: str, mailcatcher: MailCatcher
) -> None:
    now = await time_env.get_current_time()
    window = quiet_window(
        now, "Europe/Lisbon", starts_in=timedelta(hours=1), lasts=timedelta(hours=5)
    )
    async with open_stack(
        time_env, temporal, sqlite_url, mailcatcher, settings_overrides={"quiet_hours": window}
    ) as stack:
        email = new_email()
        wid = await start_cart(stack, email, new_id("cart"))
        state = await finish(stack, wid)

    assert state.started_at is not None
    first = state.emails[0]
    # Due at 2 h, inside the window (1 h to 6 h from `now`): held to its end, then sent.
    assert first.status == "sent"
    end = quiet_window_end(
        now, "Europe/Lisbon", starts_in=timedelta(hours=1), lasts=timedelta(hours=5)
    )
    assert end <= first.at < end + timedelta(minutes=3)
    # Held well past its due time (a clock change in the window moves its end in UTC).
    assert first.at - state.started_at > timedelta(hours=5, minutes=50) + dst_shift(
        state.started_at, end
    )
    assert f"{first.at.astimezone(ZoneInfo('Europe/Lisbon')):%H:%M}" == window.split("-")[1]


def history_text(history_json: str) -> str:
    """A history as text, with every payload decoded (payloads are base64 in the JSON)."""
    texts = [history_json]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == "data" and isinstance(value, str):
                    texts.append(base64.b64decode(value).decode("utf-8", "replace"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(history_json))
    return "\n".join(texts)


async def test_no_personal_data_reaches_the_history(stack: Stack) -> None:
    """The contact's properties (the profile read by the returning-customer split) and an SMTP
    refusal that names the recipient stay out of the workflow's history."""
    email, token = new_email(), new_id("cart")
    event = cart_event(email, token)
    event["contact"]["properties"] = {"note": "personal-property-value"}
    stack.mail.fail_next(1, 550, f"5.1.1 <{email}>: Recipient address rejected")
    response = await stack.post(event)
    [wid] = response.json()["results"][0]["journeys"]
    state = await stack.finish(wid)
    assert state.emails[0].status == "failed"  # the 550 happened, and was recorded
    history = await stack.temporal.get_workflow_handle(wid).fetch_history()
    text = history_text(history.to_json())
    assert "contact_profile" in text  # the profile was read
    assert "SMTPPermanentError" in text  # the refusal is there...
    assert "personal-property-value" not in text
    assert email not in text  # ... without the address


async def test_store_event_ids_stay_out_of_the_history(stack: Stack) -> None:
    """A store's event id is free text (here, one with the customer's name in it): the journey
    knows it by a digest; the database keeps the store's id, and the journey runs as before."""
    email, token = new_email(), new_id("cart")
    event_id = f"checkout-of-maria-{new_id('x')}"
    response = await stack.post(cart_event(email, token, event_id=event_id))
    [wid] = response.json()["results"][0]["journeys"]
    state = await stack.finish(wid)
    assert [e.status for e in state.emails][:1] == ["sent"]
    history = await stack.temporal.get_workflow_handle(wid).fetch_history()
    text = history_text(history.to_json())
    assert "maria" not in text and "evt-" in text
    # The Message-ID derives from the journey's own id: the same on every retry.
    [first, *_] = await stack.messages(wid)
    assert first.trigger_event_id.startswith("evt-")
