"""Double opt-in (`NUDGE_DOUBLE_OPT_IN=true`): a subscription sends a confirmation email with a
signed link; until it is clicked the contact gets no marketing; consent is recorded with time,
source and IP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from nudge.models import ConsentRecord, Contact
from support import Stack, cart_event, new_email, new_id


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
    for bad in (f"/c/{body}.{mac[:-2]}AA", "/c/nonsense"):
        assert (await stack.http.post(bad)).status_code == 400
    # An unsubscribe token (another purpose) does not confirm either.
    assert (await contact_of(stack, victim))[0].consent == "pending"


async def test_without_double_opt_in_a_subscription_is_at_once(stack: Stack) -> None:
    email = new_email()
    await stack.post(subscribed(email, ip=None))
    contact, records = await contact_of(stack, email)
    assert contact.consent == "subscribed" and stack.mail_to(email) == []
    assert [(r.action, r.source, r.ip) for r in records] == [("subscribed", "footer_form", None)]
