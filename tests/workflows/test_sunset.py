"""The sunset flow on the time-skipping server, through the real hourly segment refresh, API
(tracking included), worker, database and SMTP server."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.contacts import suppression
from nudge.dev.mailcatcher import CaughtMessage, MailCatcher
from nudge.journeys.contracts import JourneyStatus
from nudge.segments.catalogue import segments_of
from nudge.storage.models import Contact, Message, MessageEvent, MessageStatus, utcnow
from support import (
    Stack,
    cart_event,
    contact_id,
    dst_shift,
    journey_id,
    journeys,
    new_email,
    new_id,
    quiet_window,
    record_history,
    refresh_contact,
    refresh_segments,
    unsubscribe_event,
)
from workflows.cart_abandonment import CartAbandonment
from workflows.journey import choose
from workflows.sunset import Sunset

# The cart flow sends the contact a real marketing email: the one they never open.
STACK_FLOWS = (Sunset, CartAbandonment)
# A click within NUDGE_TRACKING_SCANNER_SECONDS of the send counts as a link scanner's; here
# the reader clicks days later in journey time but seconds later on the wall clock.
STACK_SETTINGS = NO_SCANNER_WINDOW = {"tracking_scanner_seconds": 0}
LISBON = ZoneInfo("Europe/Lisbon")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"


async def post(stack: Stack, body: dict[str, Any]) -> list[str]:
    response = await stack.post(body)
    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    return list(result["journeys"])


async def silent_customer(stack: Stack, time_env: WorkflowEnvironment, email: str) -> int:
    """A contact in Lisbon known for 200 days, who was just sent a cart reminder (a real email)
    and has never opened or clicked anything."""
    await post(stack, cart_event(email, new_id("cart")))
    await time_env.sleep(timedelta(hours=2, minutes=5))
    assert [m.message["X-Nudge-Step"] for m in stack.mail_to(email)] == ["cart_1"]
    cid = await contact_id(stack, email)
    async with stack.sessions.begin() as session:
        await session.execute(
            update(Contact)
            .where(Contact.id == cid)
            .values(created_at=utcnow() - timedelta(days=200))
        )
    return cid


async def hourly_refresh(stack: Stack, cid: int) -> str:
    """The hourly refresh puts the contact in `unengaged_180`, which starts their sunset."""
    result = await refresh_segments(stack, STACK_FLOWS, utcnow())
    assert result.segments["unengaged_180"].entered >= 1
    wid = await journey_id(stack, "sunset", cid, "unengaged_180")
    assert [j.workflow_id for j in await journeys(stack, "sunset", cid)] == [wid]
    return wid


async def silent_for_half_a_year(
    stack: Stack, time_env: WorkflowEnvironment, email: str
) -> tuple[int, str]:
    cid = await silent_customer(stack, time_env, email)
    return cid, await hourly_refresh(stack, cid)


async def sunset_mail(stack: Stack, email: str) -> CaughtMessage:
    """The re-permission email, once it has arrived (it goes out as the journey starts)."""
    async with asyncio.timeout(20):
        while not (
            found := [m for m in stack.mail_to(email) if m.message["X-Nudge-Step"] == "sunset_1"]
        ):
            await asyncio.sleep(0.05)
    [mail] = found
    return mail


async def on_journey_clock(stack: Stack, cid: int) -> None:
    """Put the contact's opens and clicks on the test server's clock: it runs ahead of the wall
    clock (which the tracking endpoints stamp) by all the time earlier tests skipped, and the
    journey compares them with its own start."""
    ahead = await stack.env.get_current_time() - utcnow()
    async with stack.sessions.begin() as session:
        for event in await session.scalars(
            select(MessageEvent).where(MessageEvent.contact_id == cid)
        ):
            event.at += ahead
            if event.last_at is not None:  # a repeat's latest time (nudge/mail/tracking.py)
                event.last_at += ahead


async def test_no_engagement_in_14_days_suppresses_the_contact_from_marketing(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    cid, wid = await silent_for_half_a_year(stack, time_env, email)

    state = await stack.finish(wid)

    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "sunset")
    # Sent at once although the cart reminder went out minutes before: smart sending is off.
    assert [(e.step, e.status) for e in state.emails] == [("sunset_1", "sent")]
    assert state.started_at is not None
    assert state.emails[0].at - state.started_at < timedelta(minutes=1)
    mail = await sunset_mail(stack, email)
    assert "keep me on the list" in (mail.text or "")
    # The A/B'd question: the contact's own variant, recorded, and its subject sent.
    rows = await stack.messages(wid)
    variant = choose(f"sunset\x1fsunset_1\x1f{cid}", {"a": 50, "b": 50})
    assert (rows[0].variant, state.emails[0].variant) == (variant, variant)
    assert rows[0].template == {"a": "sunset_1", "b": "sunset_1_b"}[variant]
    subject = {"a": "Do you still want to hear from us", "b": "Should we stay in touch"}
    assert mail.message["Subject"].startswith(subject[variant])
    async with stack.sessions() as session:
        [row] = await suppression.of_contact(session, cid)
    assert (row.reason, row.source) == ("sunset", "flow")
    await record_history(stack, "sunset_suppressed", wid)

    # Marketing now stops at the send: a new abandoned cart gets no reminder.
    [cart_wid] = await post(stack, cart_event(email, new_id("cart")))
    cart = await stack.finish(cart_wid)
    assert (cart.status, cart.exit_reason) == (JourneyStatus.EXITED, "suppressed")
    steps = [m.message["X-Nudge-Step"] for m in stack.mail_to(email)]
    assert steps.count("cart_1") == 1


async def test_a_click_on_the_button_keeps_the_contact(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    cid, wid = await silent_for_half_a_year(stack, time_env, email)
    await time_env.sleep(timedelta(days=3))
    await click_the_button(stack, email)
    await on_journey_clock(stack, cid)

    state = await stack.finish(wid)

    assert (state.status, state.exit_reason) == (JourneyStatus.COMPLETED, "kept")
    async with stack.sessions() as session:
        assert await suppression.of_contact(session, cid) == []
    await record_history(stack, "sunset_kept", wid)


async def test_a_privacy_proxy_open_is_not_engagement(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    cid, wid = await silent_for_half_a_year(stack, time_env, email)
    html = (await sunset_mail(stack, email)).html or ""
    [pixel] = re.findall(r'<img src="([^"]+/t/o/[^"]+)"', html)
    # Apple Mail Privacy Protection fetches every image with this bare user agent.
    response = await stack.http.get(
        pixel.replace(stack.settings.public_url.rstrip("/"), ""),
        headers={"User-Agent": "Mozilla/5.0"},
    )
    assert response.status_code == 200
    await on_journey_clock(stack, cid)

    state = await stack.finish(wid)

    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "sunset")


async def test_unsubscribing_ends_it_without_a_sunset_suppression(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    email = new_email()
    cid, wid = await silent_for_half_a_year(stack, time_env, email)
    await time_env.sleep(timedelta(days=1))
    assert wid in await post(stack, unsubscribe_event(email))
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "customer_unsubscribed")
    async with stack.sessions() as session:
        assert "sunset" not in {s.reason for s in await suppression.of_contact(session, cid)}


async def test_quiet_hours_hold_the_question_until_they_end(
    stack: Stack,
    time_env: WorkflowEnvironment,
    temporal: Client,
    db_url: str,
    mailcatcher: MailCatcher,
) -> None:
    email = new_email()
    cid = await silent_customer(stack, time_env, email)
    now = await time_env.get_current_time()
    window = quiet_window(
        now, "Europe/Lisbon", starts_in=-timedelta(minutes=30), lasts=timedelta(hours=3)
    )
    overrides = {"quiet_hours": window, **NO_SCANNER_WINDOW}
    async with open_stack(
        time_env, temporal, db_url, mailcatcher, STACK_FLOWS, settings_overrides=overrides
    ) as quiet:
        wid = await hourly_refresh(quiet, cid)  # inside the window
        state = await quiet.finish(wid)

    assert state.started_at is not None and state.exit_reason == "sunset"
    [asked] = state.emails
    # Due at once, held (not dropped, smart sending or not) and sent as the window ends.
    assert asked.status == "sent"
    # A window that spans a daylight-saving change is an hour longer (autumn) or shorter.
    shift = dst_shift(state.started_at, asked.at)
    assert (
        timedelta(hours=2) + shift
        < asked.at - state.started_at
        < timedelta(hours=2, minutes=35) + shift
    )
    assert f"{asked.at.astimezone(LISBON):%H:%M}" == window.split("-")[1]


async def test_a_contact_is_asked_once_ever(stack: Stack, time_env: WorkflowEnvironment) -> None:
    email = new_email()
    cid, wid = await silent_for_half_a_year(stack, time_env, email)
    assert (await stack.finish(wid)).exit_reason == "sunset"
    # Later on they click a link in the re-permission email after all: engaged, they leave
    # `unengaged_180` at the next refresh.
    await click_the_button(stack, email)
    assert await refresh_contact(stack, STACK_FLOWS, cid, utcnow()) == []
    async with stack.sessions() as session:
        assert "unengaged_180" not in {sid for sid, _, _ in await segments_of(session, cid)}
    # Half a year on, mailed once more (a newsletter) and silent again: back in
    # `unengaged_180`, but the question is not asked twice.
    later = utcnow() + timedelta(days=200)
    async with stack.sessions.begin() as session:
        session.add(
            Message(
                message_id=f"{new_id('m')}@shop.example",
                workflow_id=f"newsletter-{cid}-june",
                trigger_event_id=new_id("evt"),
                step="newsletter",
                flow="newsletter",
                contact_id=cid,
                template="newsletter",
                status=MessageStatus.SENT,
                sent_at=later - timedelta(days=10),
            )
        )
    assert await refresh_contact(stack, STACK_FLOWS, cid, later) == []
    async with stack.sessions() as session:
        assert "unengaged_180" in {sid for sid, _, _ in await segments_of(session, cid)}
    assert len(await journeys(stack, "sunset", cid)) == 1


async def click_the_button(stack: Stack, email: str) -> None:
    """Click "keep me on the list" in a browser."""
    html = (await sunset_mail(stack, email)).html or ""
    [button] = [
        href
        for tag, href in re.findall(r'(<a\b[^>]*?href="([^"]+)"[^>]*>)', html)
        if 'class="button"' in tag
    ]
    assert "/t/c/" in button  # tracked: the click is recorded
    response = await stack.http.get(
        button.replace(stack.settings.public_url.rstrip("/"), ""), headers={"User-Agent": BROWSER}
    )
    assert response.status_code == 302
    assert response.headers["location"].rstrip("/") == stack.settings.public_url.rstrip("/")
