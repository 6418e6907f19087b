"""Address hygiene at `POST /v1/events`: syntax (email-validator, no DNS), role addresses and
obviously fake ones are refused with a 422 naming `contact.email`, and nothing is stored."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from nudge.events.hygiene import ROLE_LOCAL_PARTS
from nudge.storage.models import Contact
from support import Stack, cart_event, new_id


def suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.mark.parametrize(
    ("email", "says"),
    [
        ("not-an-email", "email"),
        ("ana@@example.com", "email"),
        ("ana@example", "email"),
        ("ana silva@example.com", "email"),
        ("admin@shop-{s}.com", "role address"),
        ("postmaster@shop-{s}.com", "role address"),
        ("No-Reply+x@shop-{s}.com", "role address"),
        ("info@shop-{s}.com", "role address"),
        ("test@shop-{s}.com", "not a real mailbox"),
        ("ana@shop-{s}.invalid", ""),
    ],
)
async def test_bad_addresses_are_refused_naming_the_field(
    stack: Stack, email: str, says: str
) -> None:
    email = email.format(s=suffix())
    response = await stack.post(cart_event(email, new_id("cart")))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert [f["field"] for f in error["fields"]] == ["contact.email"]
    assert says in error["fields"][0]["message"]
    async with stack.sessions() as session:
        assert await session.scalar(select(Contact).where(Contact.email == email.lower())) is None


async def test_a_personal_address_that_looks_close_is_accepted(stack: Stack) -> None:
    for local in ("admin.ana", "information", "ana.info"):
        email = f"{local}.{suffix()}@example.com"
        response = await stack.post(cart_event(email, new_id("cart")))
        assert response.status_code == 202, response.text


def test_the_role_list_is_documented() -> None:
    assert {"admin", "postmaster", "abuse", "noreply", "info"} <= ROLE_LOCAL_PARTS
