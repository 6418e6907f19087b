"""The whole spine on real parts: the Temporal dev server (`start_local`, as `make run` uses it),
the API app, a worker process started from `worker.py`, an SMTP server and SQLite.

`NUDGE_TIME_SCALE=3600` turns the flow's hours into seconds, so the first email (2 hours) lands
two seconds after the cart event.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from conftest import make_settings
from nudge.dev.mailcatcher import CaughtMessage, MailCatcher
from nudge.dev.temporal_dev import temporal_binary
from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus
from nudge.journeys.search_attributes import CONTACT, FLOW, STATUS, start_search_attributes
from nudge.settings import Settings
from support import cart_event, new_email, new_id, order_event
from workflows import FLOWS

ROOT = Path(__file__).resolve().parent.parent
SCALE = 3600.0


@pytest.fixture
def settings(dev_env: WorkflowEnvironment, sqlite_url: str, mailcatcher: MailCatcher) -> Settings:
    target = dev_env.client.service_client.config.target_host
    return make_settings(sqlite_url, mailcatcher, temporal_address=target, time_scale=SCALE)


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    env = os.environ | {
        "NUDGE_DATABASE_URL": settings.database_url,
        "NUDGE_TEMPORAL_ADDRESS": settings.temporal_address,
        "NUDGE_TASK_QUEUE": settings.task_queue,
        "NUDGE_SMTP_HOST": settings.smtp_host,
        "NUDGE_SMTP_PORT": str(settings.smtp_port),
        "NUDGE_FROM_EMAIL": settings.from_email,
        "NUDGE_ENV": settings.env,
    }
    process = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=env)
    yield process
    process.terminate()
    process.wait(timeout=30)


@pytest_asyncio.fixture(loop_scope="session")
async def api(settings: Settings, dev_env: WorkflowEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, dev_env.client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://nudge",
            headers={"Authorization": f"Bearer {settings.api_key}"},
        ) as client,
    ):
        yield client


async def mail_for(
    catcher: MailCatcher, email: str, count: int, timeout: float
) -> list[CaughtMessage]:
    async with asyncio.timeout(timeout):
        while len(caught := [m for m in catcher.messages if email in m.rcpt_tos]) < count:
            await asyncio.sleep(0.05)
    return caught


async def test_cart_event_to_first_email_on_the_dev_server(
    api: httpx.AsyncClient,
    dev_env: WorkflowEnvironment,
    mailcatcher: MailCatcher,
    worker_process: subprocess.Popen[bytes],
) -> None:
    client: Client = dev_env.client
    email, token = new_email(), new_id("cart")
    event = cart_event(email, token)

    response = await api.post("/v1/events", json=event)
    assert response.status_code == 202, response.text
    [workflow_id] = response.json()["results"][0]["journeys"]

    [first] = await mail_for(mailcatcher, email, 1, timeout=30)
    assert first.subject == "Ana, your order didn't go through"
    assert first.html is not None
    assert "Linen shirt" in first.html
    assert "€49.00" in first.html
    assert '<img src="https://shop.example/img/p1.jpg" alt="Linen shirt"' in first.html

    # The same event again changes nothing: no new journey, no new email.
    again = await api.post("/v1/events", json=event)
    assert again.json()["results"] == [{"id": event["id"], "status": "duplicate", "journeys": []}]
    await asyncio.sleep(3)  # email 2 is due 26 s after the start at this scale
    assert len([m for m in mailcatcher.messages if email in m.rcpt_tos]) == 1

    # Operators find the journey by its search attributes and read its summary in the UI.
    handle = client.get_workflow_handle(workflow_id, result_type=JourneyState)
    description = await handle.describe()
    contact_id = description.typed_search_attributes.get(CONTACT)
    assert contact_id is not None and "@" not in workflow_id + contact_id
    assert description.typed_search_attributes.get(FLOW) == "cart_abandonment"
    summary = await description.static_summary()
    assert summary is not None and f"contact {contact_id}" in summary
    listed = [w async for w in client.list_workflows(f'NudgeContact="{contact_id}"')]
    assert [w.id for w in listed] == [workflow_id]
    state = await handle.query("state", result_type=JourneyState)
    assert (state.status, state.step, [e.step for e in state.emails]) == (
        "running",
        "cart_1",
        ["cart_1"],
    )

    # Buying ends the journey at once, converted.
    await api.post("/v1/events", json=order_event(email, new_id("order"), cart_token=token))
    async with asyncio.timeout(15):
        final = await handle.result()
    assert final.status == JourneyStatus.CONVERTED
    assert (await handle.describe()).typed_search_attributes.get(STATUS) == "converted"
    journeys = (await api.get(f"/v1/contacts/{email}/journeys")).json()["journeys"]
    # (The order also makes a one-time buyer, which starts flows of its own.)
    assert [
        (j["flow"], j["status"], j["step"]) for j in journeys if j["flow"] == "cart_abandonment"
    ] == [("cart_abandonment", "converted", "cart_1")]


async def test_every_flow_is_found_by_its_flow_in_the_temporal_cli(
    dev_env: WorkflowEnvironment,
) -> None:
    """`temporal workflow list --query 'NudgeFlow="winback"'` finds each flow's journeys, started
    the way the API starts them (search attributes, summary), contact by id only."""
    client: Client = dev_env.client
    queue = f"parked-{new_id('q')}"  # no worker polls it: the journeys just wait, findable
    handles = []
    for n, flow in enumerate(FLOWS):
        handles.append(
            await client.start_workflow(
                flow.flow,
                JourneyInput(flow=flow.flow, contact_id=900 + n, key="k", trigger_event_id="e"),
                id=f"{flow.flow}-{900 + n}-{new_id('k')}",
                task_queue=queue,
                search_attributes=start_search_attributes(flow.flow, 900 + n),
                static_summary=f"{flow.flow} · contact {900 + n} · k",
            )
        )
    target = dev_env.client.service_client.config.target_host
    try:
        for n, flow in enumerate(FLOWS):
            query = f'NudgeFlow="{flow.flow}" AND NudgeContact="{900 + n}"'
            found: list[dict[str, Any]] = []
            for _ in range(50):  # visibility is eventually consistent
                listed = await asyncio.create_subprocess_exec(
                    *(temporal_binary(), "workflow", "list", "--address", target),
                    *("--query", query, "--output", "json"),
                    stdout=subprocess.PIPE,
                )
                out, _ = await listed.communicate()
                assert listed.returncode == 0, out
                found = json.loads(out or b"[]")
                if found:
                    break
                await asyncio.sleep(0.1)
            assert [f["execution"]["workflowId"] for f in found] == [handles[n].id], flow.flow
    finally:
        for handle in handles:
            await handle.terminate(reason="test over")
