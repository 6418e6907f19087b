"""One-click unsubscribe from a real email's `List-Unsubscribe` header, on the real stack."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

from sqlalchemy import select

from nudge.dev.mailcatcher import CaughtMessage
from nudge.journeys.contracts import JourneyStatus
from nudge.storage.models import Contact, utcnow
from support import Stack, cart_event, forged, iso, new_email, new_id


async def first_email(stack: Stack, email: str) -> tuple[str, CaughtMessage]:
    response = await stack.post(cart_event(email, new_id("cart")))
    [wid] = response.json()["results"][0]["journeys"]
    await stack.env.sleep(timedelta(hours=3))
    [caught] = stack.mail_to(email)
    return wid, caught


def one_click_path(caught: CaughtMessage) -> str:
    header = str(caught.message["List-Unsubscribe"])
    [url] = re.findall(r"<(https?://[^>]+)>", header)
    assert "mailto:unsubscribe@" in header
    assert str(caught.message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    return "/" + str(url).split("/", 3)[3]


async def consent_of(stack: Stack, email: str) -> str:
    async with stack.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.email == email))
    assert contact is not None
    return str(contact.consent)


async def test_one_click_unsubscribe_ends_the_running_journey(stack: Stack) -> None:
    email = new_email()
    wid, caught = await first_email(stack, email)
    path = one_click_path(caught)
    assert caught.html is not None and path in caught.html  # the footer link is the same URL

    page = await stack.http.get(path)
    assert page.status_code == 200 and email in page.text and "<form method=post" in page.text

    response = await stack.http.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert await consent_of(stack, email) == "unsubscribed"
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "customer_unsubscribed")
    assert [e.step for e in state.emails] == ["cart_1"]
    assert len(stack.mail_to(email)) == 1
    # A second click is harmless.
    again = await stack.http.post(path)
    assert again.status_code == 200


async def test_forged_or_retargeted_tokens_are_refused_and_change_nothing(stack: Stack) -> None:
    victim, attacker = new_email(), new_email()
    await first_email(stack, victim)
    _, caught = await first_email(stack, attacker)
    path = one_click_path(caught)
    body, mac = path.removeprefix("/u/").split(".")

    # The attacker's own token, edited to name the victim's contact id, keeps its signature.
    attacker_id, message_id = base64.urlsafe_b64decode(body + "==").decode().split("\x1f")
    async with stack.sessions() as session:
        victim_row = await session.scalar(select(Contact).where(Contact.email == victim))
    assert victim_row is not None and str(victim_row.id) != attacker_id
    edited = base64.urlsafe_b64encode(f"{victim_row.id}\x1f{message_id}".encode()).rstrip(b"=")
    forged_mac = forged(mac)
    for bad in (
        f"/u/{edited.decode()}.{mac}",
        f"/u/{body}.{forged_mac}",
        "/u/nonsense",
        f"/u/{body}",
    ):
        for method in ("GET", "POST"):
            response = await stack.http.request(method, bad)
            assert response.status_code == 400, (method, bad, response.text)
            assert response.json()["error"]["code"] == "invalid_token"
    assert await consent_of(stack, victim) == "implied"
    assert await consent_of(stack, attacker) == "implied"


def subscribe_event(email: str) -> dict[str, object]:
    return {
        "id": new_id("evt"),
        "type": "customer_subscribed",
        "occurred_at": iso(utcnow()),
        "contact": {"email": email},
    }


async def test_the_same_link_unsubscribes_again_after_a_resubscribe(stack: Stack) -> None:
    """An unsubscribe always takes effect: the link clicked again after the store re-subscribed
    the contact is not dropped as a duplicate of the first click."""
    email = new_email()
    _, caught = await first_email(stack, email)
    path = one_click_path(caught)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for method_path, body in (
        (path, b"List-Unsubscribe=One-Click"),
        (path.replace("/u/", "/p/"), b"action=all"),
    ):
        assert (await stack.post(subscribe_event(email))).status_code == 202
        assert await consent_of(stack, email) == "subscribed"
        response = await stack.http.post(method_path, content=body, headers=form)
        assert response.status_code == 200 and "unsubscribed" in response.text
        assert await consent_of(stack, email) == "unsubscribed", method_path
    # ... and again, after another re-subscribe, through the very first link.
    assert (await stack.post(subscribe_event(email))).status_code == 202
    assert (await stack.http.post(path, headers=form)).status_code == 200
    assert await consent_of(stack, email) == "unsubscribed"
