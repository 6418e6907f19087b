"""The journey toolkit's contracts with the API's router and the worker."""

from __future__ import annotations

import sys

from sqlalchemy import select
from temporalio.workflow import _Definition

from nudge.storage.models import JourneyRecord
from support import Stack, cart_event, new_email, new_id, order_event
from workflows import FLOWS


def test_flows_are_registered_under_their_flow_name() -> None:
    # The API starts journeys by workflow type name; it must be the flow's name.
    names = [_Definition.must_from_class(flow).name for flow in FLOWS]
    assert names == [flow.flow for flow in FLOWS]
    assert len(set(names)) == len(names)


def test_every_flow_declares_triggers_and_goals() -> None:
    for flow in FLOWS:
        # Started by store events, or by entering a segment (win-back, VIP, sunset).
        assert flow.triggers or flow.segment_triggers, flow.flow
        assert flow.exit_goals, flow.flow
        story = sys.modules[flow.__module__].__doc__
        assert story and len(story.splitlines()) > 3, f"{flow.flow}'s module tells no story"


async def test_goal_event_after_the_journey_ended_closes_its_row(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    response = await stack.post(cart_event(email, token))
    [wid] = response.json()["results"][0]["journeys"]
    await stack.finish(wid)

    response = await stack.post(order_event(email, new_id("order"), cart_token=token))
    assert response.status_code == 202
    assert response.json()["results"][0]["journeys"] == []
    async with stack.sessions() as session:
        row = await session.scalar(select(JourneyRecord).where(JourneyRecord.workflow_id == wid))
    assert row is not None and row.closed_at is not None
