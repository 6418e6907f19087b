"""Determinism guard: journeys recorded from earlier versions of each flow must replay on the
current code. A change that would break journeys in flight fails here; gate it with
`workflow.patched`. `NUDGE_RECORD_HISTORIES=1 pytest tests/workflows/test_replay.py` records
fresh histories next to this file (commit them when a flow changes on purpose)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from support import Stack, cart_event, new_email, new_id, order_event, record_history
from workflows import FLOWS

HISTORIES = Path(__file__).with_name("histories")


def replayer() -> Replayer:
    return Replayer(workflows=list(FLOWS), data_converter=pydantic_data_converter)


def recorded() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", recorded(), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    await replayer().replay_workflow(history)


def test_every_flow_has_a_recorded_history() -> None:
    stems = {p.stem for p in recorded()}
    for flow in FLOWS:
        assert any(s.startswith(flow.flow) for s in stems), f"no recorded history for {flow.flow}"


async def test_fresh_journeys_replay(stack: Stack) -> None:
    # A returning customer: the journey takes the `returning-customer-split` branch. The
    # `cart_abandonment_v1_*` histories were recorded before that patch and replay its old path.
    email, token = new_email(), new_id("cart")
    await stack.post(order_event(email, new_id("order")))
    response = await stack.post(cart_event(email, token))
    [completed] = response.json()["results"][0]["journeys"]
    await stack.finish(completed)
    await record_history(stack, "cart_abandonment_completed", completed)

    email, token = new_email(), new_id("cart")
    response = await stack.post(cart_event(email, token))
    [converted] = response.json()["results"][0]["journeys"]
    await stack.env.sleep(timedelta(hours=1))
    await stack.post(cart_event(email, token))  # restarts the clock: a signal in the history
    await stack.env.sleep(timedelta(hours=3))
    await stack.post(order_event(email, new_id("order"), cart_token=token))
    await stack.finish(converted)
    await record_history(stack, "cart_abandonment_converted", converted)
