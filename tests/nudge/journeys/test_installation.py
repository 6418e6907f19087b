"""Journey ids and Message-IDs that cannot collide: two Nudge databases on one Temporal namespace
(a reset, SQLite then PostgreSQL, staging and production) each number contacts from 1, and each
journey id carries its database's installation id. Journeys started before installation ids keep
their ids: routing still feeds and ends them."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import MailCatcher
from nudge.journeys import records
from nudge.journeys.contracts import JourneyInput, JourneyStatus, workflow_id
from nudge.journeys.search_attributes import INSTALLATION, start_search_attributes
from nudge.storage.db import migrate_async
from nudge.storage.installation import load_installation_id
from support import cart_event, contact_id, new_email, new_id, order_event
from workflows.cart_abandonment import CartAbandonment

FLOWS = (CartAbandonment,)


async def test_two_databases_on_one_namespace_never_share_a_journey_or_a_message_id(
    time_env: WorkflowEnvironment, temporal: Client, mailcatcher: MailCatcher, tmp_path: Path
) -> None:
    token = new_id("cart")  # the same cart token: only the installation tells them apart
    people, journeys, message_ids = [new_email(), new_email()], [], []
    for n, person in enumerate(people):
        url = f"sqlite+aiosqlite:///{tmp_path / f'nudge-{n}.db'}"
        await migrate_async(url)
        async with open_stack(time_env, temporal, url, mailcatcher, FLOWS) as stack:
            installation = await load_installation_id(stack.sessions)
            assert installation == await load_installation_id(stack.sessions)  # made once
            response = await stack.post(cart_event(person, token))
            [wid] = response.json()["results"][0]["journeys"]
            assert await contact_id(stack, person) == 1  # a fresh database numbers from 1
            assert wid == workflow_id("cart_abandonment", 1, token, installation)
            described = await temporal.get_workflow_handle(wid).describe()
            assert described.typed_search_attributes.get(INSTALLATION) == installation
            state = await stack.finish(wid)
            assert [e.step for e in state.emails][:1] == ["cart_1"]
            message_ids.append({m.message_id for m in await stack.messages(wid)})
            journeys.append(wid)
    assert journeys[0] != journeys[1]
    assert not message_ids[0] & message_ids[1] and all(message_ids)
    # Each person got their own emails, and only theirs.
    for person, ids in zip(people, message_ids, strict=True):
        caught = {
            (m.message_id or "").strip("<>") for m in mailcatcher.messages if person in m.rcpt_tos
        }
        assert caught == ids


async def test_a_journey_started_before_installation_ids_keeps_its_id(
    time_env: WorkflowEnvironment, temporal: Client, mailcatcher: MailCatcher, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'upgraded.db'}"
    await migrate_async(url)
    async with open_stack(time_env, temporal, url, mailcatcher, FLOWS) as stack:
        person, token = new_email(), new_id("cart")
        # The contact exists (an unrelated event); then a journey as the old format started it.
        await stack.post(order_event(person, new_id("order")))
        contact = await contact_id(stack, person)
        legacy = workflow_id("cart_abandonment", contact, token)
        handle = await temporal.start_workflow(
            "cart_abandonment",
            JourneyInput(
                flow="cart_abandonment", contact_id=contact, key=token, trigger_event_id="old"
            ),
            id=legacy,
            task_queue=stack.settings.task_queue,
            search_attributes=start_search_attributes("cart_abandonment", contact),
        )
        async with stack.sessions.begin() as session:
            await records.record_journey(
                session,
                workflow_id=legacy,
                run_id=handle.result_run_id or "",
                flow="cart_abandonment",
                contact_id=contact,
                event_id="old",
            )
        # A cart update feeds the running journey under its old id: no second journey.
        response = await stack.post(cart_event(person, token))
        assert response.json()["results"][0]["journeys"] == [legacy]
        async with stack.sessions() as session:
            rows = await records.journeys_of(session, contact)
        assert [r.workflow_id for r in rows if r.flow == "cart_abandonment"] == [legacy]
        # Its exit goal still finds it (through the journeys table).
        await stack.post(order_event(person, new_id("order"), cart_token=token))
        final = await stack.finish(legacy)
        assert final.status == JourneyStatus.CONVERTED
        # The flow's re-entry rule (once per cart) counts it under either format ...
        again = await stack.post(cart_event(person, token))
        assert again.json()["results"][0]["journeys"] == []
        # ... and a new cart starts a journey under today's.
        other = new_id("cart")
        installation = await load_installation_id(stack.sessions)
        new = await stack.post(cart_event(person, other))
        assert new.json()["results"][0]["journeys"] == [
            workflow_id("cart_abandonment", contact, other, installation)
        ]
