"""The flow toolkit (workflows/journey.py) on the real stack, time-skipped: local-time waits,
quiet hours, smart sending, waiting for an event, re-entry rules, filters and random splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest_asyncio
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

# The sandbox re-imports this module for the flows defined here: pass the rest through.
with workflow.unsafe.imports_passed_through():
    from conftest import open_stack
    from nudge.dev.mailcatcher import MailCatcher
    from nudge.events.schemas import StoreEventIn, cart_of
    from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus
    from support import (
        Stack,
        cart_event,
        dst_shift,
        new_email,
        new_id,
        quiet_window,
        quiet_window_end,
    )

from workflows.journey import Journey, Reentry, choose

LISBON = ZoneInfo("Europe/Lisbon")


class _CartKeyed(Journey):
    # Several of these run for one cart: smart sending would let only the first one mail.
    smart_sending = False
    triggers = ("cart_updated",)
    exit_goals = {"order_placed": JourneyStatus.CONVERTED}

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        cart = cart_of(event)
        return cart.token if cart else None


@workflow.defn(name="toolkit_local_time")
class LocalTime(_CartKeyed):
    """Next day at 10:00 in the contact's timezone."""

    flow = "toolkit_local_time"

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait_until("10:00", days=1)
        await self.send("cart_1")


@workflow.defn(name="toolkit_quiet")
class Quiet(_CartKeyed):
    """Two hours later, unless that is inside quiet hours."""

    flow = "toolkit_quiet"
    reentry = Reentry.once()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=2)
        await self.send("cart_1")


@workflow.defn(name="toolkit_wait_for")
class WaitFor(_CartKeyed):
    """An email when checkout starts, if it does within a day."""

    flow = "toolkit_wait_for"
    listens = ("checkout_started",)
    reentry = Reentry.per_key()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        if await self.wait_for("checkout_started", days=1):
            await self.send("cart_1", variants={"a": "cart_1", "b": "cart_2"})


@workflow.defn(name="toolkit_weekly")
class Weekly(_CartKeyed):
    """At most once a week, whatever the cart."""

    flow = "toolkit_weekly"
    reentry = Reentry.every(days=7)
    filters = ("no_such_filter",)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.send("cart_1")


FLOWS = (LocalTime, Quiet, WaitFor, Weekly)


@pytest_asyncio.fixture(loop_scope="session")
async def toolkit(
    time_env: WorkflowEnvironment, temporal: Client, sqlite_url: str, mailcatcher: MailCatcher
) -> AsyncIterator[Stack]:
    async with open_stack(time_env, temporal, sqlite_url, mailcatcher, FLOWS) as opened:
        yield opened


async def start(stack: Stack, body: dict[str, object]) -> list[str]:
    response = await stack.post(body)
    assert response.status_code == 202, response.text
    return list(response.json()["results"][0]["journeys"])


def only(journeys: list[str], flow: str) -> str:
    [wid] = [j for j in journeys if f"-{flow}-" in j]
    return wid


async def test_wait_until_is_the_next_day_at_ten_in_the_contacts_timezone(toolkit: Stack) -> None:
    wid = only(await start(toolkit, cart_event(new_email(), new_id("cart"))), "toolkit_local_time")

    state = await toolkit.finish(wid)

    [email] = state.emails
    assert state.started_at is not None and email.status == "sent"
    local = email.at.astimezone(LISBON)
    assert (local.hour, local.minute) == (10, 0)
    assert local.date() == state.started_at.astimezone(LISBON).date() + timedelta(days=1)


async def test_quiet_hours_hold_a_send_until_the_window_ends(
    time_env: WorkflowEnvironment, temporal: Client, sqlite_url: str, mailcatcher: MailCatcher
) -> None:
    now = await time_env.get_current_time()
    window = quiet_window(
        now, "Europe/Lisbon", starts_in=timedelta(hours=1), lasts=timedelta(hours=3)
    )
    overrides = {"quiet_hours": window}
    async with open_stack(
        time_env, temporal, sqlite_url, mailcatcher, FLOWS, settings_overrides=overrides
    ) as stack:
        wid = only(await start(stack, cart_event(new_email(), new_id("cart"))), "toolkit_quiet")
        state = await stack.finish(wid)

    [email] = state.emails
    assert state.started_at is not None and email.status == "sent"
    # Due at 2 h, inside the window (1 h to 4 h from `now`): held, then sent as it ends, not
    # dropped.
    end = quiet_window_end(
        now, "Europe/Lisbon", starts_in=timedelta(hours=1), lasts=timedelta(hours=3)
    )
    assert end <= email.at < end + timedelta(minutes=3), (end, email.at)
    # Held well past its due time (a clock change in the window moves its end in UTC).
    assert email.at - state.started_at > timedelta(hours=3, minutes=50) + dst_shift(
        state.started_at, end
    )
    assert f"{email.at.astimezone(LISBON):%H:%M}" == window.split("-")[1]


async def test_smart_sending_skips_a_second_marketing_email_within_16_hours(
    stack: Stack, time_env: WorkflowEnvironment
) -> None:
    toolkit = stack  # the library's flows only: the cart flow twice for one contact
    email = new_email()
    first = only(await start(toolkit, cart_event(email, new_id("cart"))), "cart_abandonment")
    await time_env.sleep(timedelta(hours=1))
    second = only(await start(toolkit, cart_event(email, new_id("cart"))), "cart_abandonment")

    one, two = await toolkit.finish(first), await toolkit.finish(second)

    assert [(e.step, e.status) for e in one.emails] == [
        ("cart_1", "sent"),
        ("cart_2", "sent"),
        ("cart_3", "sent"),
    ]
    # The second cart's emails each land an hour after the first cart's: skipped, recorded
    # with the reason, and the journey carries on to its end.
    assert [(e.step, e.status, e.reason) for e in two.emails] == [
        ("cart_1", "skipped", "smart_sending"),
        ("cart_2", "skipped", "smart_sending"),
        ("cart_3", "skipped", "smart_sending"),
    ]
    assert two.status == JourneyStatus.COMPLETED
    assert len(toolkit.mail_to(email)) == 3


async def test_wait_for_an_event_and_a_stable_variant(
    toolkit: Stack, time_env: WorkflowEnvironment
) -> None:
    email, token = new_email(), new_id("cart")
    wid = only(await start(toolkit, cart_event(email, token)), "toolkit_wait_for")
    await time_env.sleep(timedelta(hours=3))
    fed = await start(toolkit, cart_event(email, token, type="checkout_started"))
    assert wid in fed

    state = await toolkit.finish(wid)

    [sent] = state.emails
    assert state.started_at is not None
    assert timedelta(hours=3) <= sent.at - state.started_at < timedelta(hours=3, minutes=1)
    assert sent.variant in {"a", "b"}
    [row] = await toolkit.messages(wid)
    assert (row.variant, row.template) == (
        sent.variant,
        {"a": "cart_1", "b": "cart_2"}[sent.variant],
    )

    # The same contact, another cart: the same variant. Nothing comes without the event.
    other = only(await start(toolkit, cart_event(email, new_id("cart"))), "toolkit_wait_for")
    await time_env.sleep(timedelta(hours=1))
    await start(toolkit, cart_event(email, other.rsplit("-", 1)[-1], type="checkout_started"))
    again = await toolkit.finish(other)
    assert [e.variant for e in again.emails] == [sent.variant]


async def test_wait_for_times_out_with_nothing_sent(toolkit: Stack) -> None:
    wid = only(await start(toolkit, cart_event(new_email(), new_id("cart"))), "toolkit_wait_for")
    state = await toolkit.finish(wid)
    assert state.emails == [] and state.status == JourneyStatus.COMPLETED


async def test_reentry_rules(toolkit: Stack) -> None:
    email, token = new_email(), new_id("cart")
    first = await start(toolkit, cart_event(email, token, occurred_at="2026-11-01T10:00:00Z"))
    assert only(first, "toolkit_quiet") and only(first, "toolkit_weekly")
    await toolkit.finish(only(first, "toolkit_wait_for"))

    # Another cart six days later: `once` and `every(days=7)` refuse, `per_key` starts.
    # (Journey ids are `{installation}-{flow}-{contact}-{key}`.)
    later = await start(
        toolkit, cart_event(email, new_id("cart"), occurred_at="2026-11-07T10:00:00Z")
    )
    assert [j.split("-")[1] for j in later] == ["toolkit_local_time", "toolkit_wait_for"]
    # The same cart again after its journey ended: `per_key` refuses it too.
    again = await start(toolkit, cart_event(email, token, occurred_at="2026-11-07T11:00:00Z"))
    assert "toolkit_wait_for" not in {j.split("-")[1] for j in again}
    # A week after the first: `every(days=7)` lets the contact in again.
    week = await start(
        toolkit, cart_event(email, new_id("cart"), occurred_at="2026-11-08T10:00:00Z")
    )
    assert only(week, "toolkit_weekly")


async def test_an_unknown_filter_fails_the_send_for_good(toolkit: Stack) -> None:
    wid = only(await start(toolkit, cart_event(new_email(), new_id("cart"))), "toolkit_weekly")
    state = await toolkit.finish(wid)
    [email] = state.emails
    assert (email.status, email.reason) == ("failed", "ApplicationError")


def test_choose_is_stable_and_follows_the_weights() -> None:
    weights = {"a": 80.0, "b": 20.0}
    picks = Counter(choose(f"flow\x1fstep\x1f{contact}", weights) for contact in range(10_000))
    assert 7700 < picks["a"] < 8300 and picks["a"] + picks["b"] == 10_000
    assert {choose("flow\x1fstep\x1f42", weights) for _ in range(5)} == {
        choose("flow\x1fstep\x1f42", weights)
    }
    assert Counter(choose(f"x{n}", {"a": 1, "b": 0}) for n in range(100)) == {"a": 100}
