"""A loyalty tier change is an event flows trigger on: an order that lifts a contact into a new
tier starts the journey of a flow that declares `loyalty_tier_changed` (a test-only flow on a
real worker), once, and a retried order starts nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus
from support import Stack, new_email, new_id, order_event
from workflows.journey import Journey


@workflow.defn(name="test_tier_up", sandboxed=False)
class TierUp(Journey):
    """Test-only: congratulate a contact on their new loyalty tier."""

    flow = "test_tier_up"
    triggers = ("loyalty_tier_changed",)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=1)

    @classmethod
    def journey_key(cls, event: ev.StoreEventIn) -> str | None:
        return event.loyalty.new if isinstance(event, ev.LoyaltyTierChanged) else None


@pytest_asyncio.fixture(loop_scope="session")
async def tier_stack(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> AsyncIterator[Stack]:
    async with open_stack(time_env, temporal, db_url, mailcatcher, flows=[TierUp]) as stack:
        yield stack


def big_order(email: str, total: str) -> dict[str, Any]:
    body = order_event(email, new_id("order"))
    body["order"]["total"] = total
    body["order"]["lines"] = [
        {"product_id": "p1", "title": "Linen shirt", "price": total, "quantity": 1}
    ]
    return body


async def test_a_tier_change_starts_the_flow_that_triggers_on_it(tier_stack: Stack) -> None:
    stack, email = tier_stack, new_email()
    first = await stack.post(big_order(email, "100.00"))  # into the lowest tier: no change
    assert first.json()["results"][0]["journeys"] == []

    lifting = big_order(email, "600.00")  # lifetime 700: silver by the default tiers
    response = await stack.post(lifting)
    [wid] = response.json()["results"][0]["journeys"]
    assert "-test_tier_up-" in wid and wid.endswith("-silver")

    again = await stack.post(lifting)
    assert again.json()["results"][0]["status"] == "duplicate"
    state = await stack.finish(wid)
    assert (state.flow, state.key, state.status) == (
        "test_tier_up",
        "silver",
        JourneyStatus.COMPLETED,
    )
