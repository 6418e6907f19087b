"""Double opt-in (`NUDGE_DOUBLE_OPT_IN=true`): a subscription sends a confirmation email with a
signed link; until it is clicked the contact gets no marketing; consent is recorded with time,
source and IP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.journeys.contracts import JourneyInput, JourneyState
from nudge.storage.models import ConsentRecord, Contact
from support import Stack, cart_event, forged, journey_id, new_email, new_id
from workflows.journey import Journey


@workflow.defn(name="test_welcome", sandboxed=False)
class Welcome(Journey):
    """Test-only: a welcome email for every new subscriber."""

    flow = "test_welcome"
    triggers = ("customer_subscribed",)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.send("welcome", template="cart_1")

    @classmethod
    def journey_key(cls, event: ev.StoreEventIn) -> str | None:
        # Keyed by the address's local part, which the test also uses as a cart token, so the
        # cart template has a cart to show.
        return event.contact.email.split("@")[0]


@pytest.fixture
def double_opt_in(stack: Stack) -> Iterator[None]:
    stack.settings.double_opt_in = True
    yield
    stack.settings.double_opt_in = False


def subscribed(email: str, *, ip: str | None = "203.0.113.7") -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": new_id("evt"),
        "type": "customer_subscribed",
        "occurred_at": "2026-11-23T09:00:00Z",
        "contact": {"email": email, "first_name": "Ana"},
        "source": "footer_form",
    }
    if ip:
        event["ip"] = ip
    return event


async def contact_of(stack: Stack, email: str) -> tuple[Contact, list[ConsentRecord]]:
    async with stack.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.email == email))
        assert contact is not None
        records = list(
            await session.scalars(
                select(ConsentRecord)
                .where(ConsentRecord.contact_id == contact.id)
                .order_by(ConsentRecord.id)
            )
        )
    return contact, records


async def test_confirmation_email_then_marketing(stack: Stack, double_opt_in: None) -> None:
    email = new_email()
    response = await stack.post(subscribed(email))
    assert response.status_code == 202, response.text
    [confirmation] = stack.mail_to(email)
    assert "confirm" in str(confirmation.message["Subject"]).lower()
    assert confirmation.message["List-Unsubscribe"] is None
    assert confirmation.html is not None and confirmation.text is not None
    [url] = set(re.findall(r'href="(https?://[^"]+/c/[^"]+)"', confirmation.html))
    assert url in confirmation.text
    path = "/" + url.split("/", 3)[3]
    contact, records = await contact_of(stack, email)
    assert contact.consent == "pending"
    assert [(r.action, r.source, r.ip) for r in records] == [
        ("pending", "footer_form", "203.0.113.7")
    ]

    # Unconfirmed: a cart journey sends nothing.
    response = await stack.post(cart_event(email, new_id("cart")))
    [wid] = response.json()["results"][0]["journeys"]
    state = await stack.finish(wid)
    assert {e.reason for e in state.emails} == {"unconfirmed"}
    assert len(stack.mail_to(email)) == 1

    # The link's page changes nothing (link scanners fetch it); the button confirms.
    page = await stack.http.get(path)
    assert page.status_code == 200 and "<form method=post" in page.text
    assert (await contact_of(stack, email))[0].consent == "pending"
    done = await stack.http.post(path)
    assert done.status_code == 200 and "subscribed" in done.text
    contact, records = await contact_of(stack, email)
    assert contact.consent == "subscribed"
    assert [(r.action, r.source, r.ip) for r in records][1] == (
        "confirmed",
        "double_opt_in",
        "127.0.0.1",
    )

    # Confirmed: marketing flows; a repeated subscription neither un-confirms nor re-asks.
    await stack.post(subscribed(email))
    assert (await contact_of(stack, email))[0].consent == "subscribed"
    response = await stack.post(cart_event(email, new_id("cart")))
    [wid] = response.json()["results"][0]["journeys"]
    await stack.env.sleep(timedelta(hours=3))
    assert len(stack.mail_to(email)) == 2


async def test_a_forged_confirmation_is_refused(stack: Stack, double_opt_in: None) -> None:
    victim = new_email()
    await stack.post(subscribed(victim))
    [confirmation] = stack.mail_to(victim)
    assert confirmation.html is not None
    [url] = set(re.findall(r'href="(https?://[^"]+/c/[^"]+)"', confirmation.html))
    token = url.rsplit("/", 1)[1]
    body, mac = token.split(".")
    for bad in (f"/c/{body}.{forged(mac)}", "/c/nonsense"):
        assert (await stack.http.post(bad)).status_code == 400
    # An unsubscribe token (another purpose) does not confirm either.
    assert (await contact_of(stack, victim))[0].consent == "pending"


async def test_without_double_opt_in_a_subscription_is_at_once(stack: Stack) -> None:
    email = new_email()
    await stack.post(subscribed(email, ip=None))
    contact, records = await contact_of(stack, email)
    assert contact.consent == "subscribed" and stack.mail_to(email) == []
    assert [(r.action, r.source, r.ip) for r in records] == [("subscribed", "footer_form", None)]


@pytest_asyncio.fixture(loop_scope="session")
async def welcome_stack(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> AsyncIterator[Stack]:
    async with open_stack(time_env, temporal, db_url, mailcatcher, flows=[Welcome]) as stack:
        stack.settings.double_opt_in = True
        yield stack


async def test_flows_see_the_subscription_only_once_confirmed(welcome_stack: Stack) -> None:
    stack, email = welcome_stack, new_email()
    key = email.split("@")[0]
    await stack.post(cart_event(email, key))
    response = await stack.post(subscribed(email))
    assert response.json()["results"][0]["journeys"] == []  # held until confirmed
    [confirmation] = stack.mail_to(email)
    assert confirmation.html is not None
    [url] = set(re.findall(r'href="(https?://[^"]+/c/[^"]+)"', confirmation.html))
    path = "/" + url.split("/", 3)[3]
    assert (await stack.http.post(path)).status_code == 200
    contact, _ = await contact_of(stack, email)
    state = await stack.finish(await journey_id(stack, "test_welcome", contact.id, key))
    assert [e.status for e in state.emails] == ["sent"]
    assert len(stack.mail_to(email)) == 2
    # A second click starts nothing more.
    assert (await stack.http.post(path)).status_code == 200
    assert len(stack.mail_to(email)) == 2


async def test_an_unsubscribed_contact_resubscribes_through_confirmation(
    stack: Stack, double_opt_in: None
) -> None:
    email = new_email()
    await stack.post(cart_event(email, new_id("cart")))
    unsubscribe = subscribed(email) | {"id": new_id("evt"), "type": "customer_unsubscribed"}
    unsubscribe["occurred_at"] = "2026-11-23T09:30:00Z"
    await stack.post(unsubscribe)
    assert (await contact_of(stack, email))[0].consent == "unsubscribed"
    again = subscribed(email) | {"occurred_at": "2026-11-23T10:00:00Z"}
    await stack.post(again)
    assert (await contact_of(stack, email))[0].consent == "pending"
    [confirmation] = stack.mail_to(email)
    assert confirmation.html is not None
    [url] = set(re.findall(r'href="(https?://[^"]+/c/[^"]+)"', confirmation.html))
    assert (await stack.http.post("/" + url.split("/", 3)[3])).status_code == 200
    response = await stack.post(cart_event(email, new_id("cart")))
    assert len(response.json()["results"][0]["journeys"]) == 1
    await stack.env.sleep(timedelta(hours=3))
    assert len(stack.mail_to(email)) == 2  # the confirmation and the first cart email
    _, records = await contact_of(stack, email)
    assert [r.action for r in records] == ["unsubscribed", "pending", "confirmed"]
    listed = await stack.http.get(
        f"/v1/contacts/{email}/suppressions", headers={"Authorization": "Bearer test-key"}
    )
    assert listed.json()["suppressions"] == []
