"""The preference page behind the footer link: topics saved per contact (server-rendered
forms, no JavaScript), a flow email of a topic turned off is skipped, "unsubscribe from
everything" ends journeys like the one-click POST, and each change is recorded with its IP."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from nudge.journeys.contracts import JourneyStatus
from nudge.storage.models import ConsentRecord, Contact
from support import Stack, cart_event, forged, new_email, new_id

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def footer_link(stack: Stack, email: str) -> tuple[str, str]:
    response = await stack.post(cart_event(email, new_id("cart")))
    [wid] = response.json()["results"][0]["journeys"]
    await stack.env.sleep(timedelta(hours=3))
    [caught] = stack.mail_to(email)
    assert caught.html is not None
    [url] = re.findall(r'href="(https?://[^"]+/u/[^"]+)"', caught.html)
    return wid, "/" + url.split("/", 3)[3]


def checked(page: str) -> set[str]:
    return set(re.findall(r"name=topics value=(\w+) checked", page))


async def test_topics_are_saved_and_a_turned_off_topic_is_not_sent(stack: Stack) -> None:
    email = new_email()
    wid, link = await footer_link(stack, email)
    page = await stack.http.get(link)
    assert page.status_code == 200
    assert checked(page.text) == {"newsletters", "promotions", "sms"}
    assert "<script" not in page.text and "<form method=post" in page.text
    [action] = set(re.findall(r"<form method=post action='([^']+)'", page.text))
    assert action.startswith("/p/")

    saved = await stack.http.post(
        action, content=b"topics=newsletters&topics=sms&action=save", headers=FORM
    )
    assert saved.status_code == 200 and "preferences are saved" in saved.text
    assert checked(saved.text) == {"newsletters", "sms"}
    assert checked((await stack.http.get(action)).text) == {"newsletters", "sms"}

    # The cart emails are promotions: the journey's next ones are skipped.
    state = await stack.finish(wid)
    assert [e.reason for e in state.emails][1:] == ["topic_unsubscribed"] * (len(state.emails) - 1)
    assert len(stack.mail_to(email)) == 1
    async with stack.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.email == email))
        assert contact is not None and contact.consent == "implied"
        [record] = await session.scalars(
            select(ConsentRecord).where(ConsentRecord.contact_id == contact.id)
        )
    assert (record.action, record.source, record.details) == (
        "topics",
        "preference_page",
        {"topics": ["newsletters", "sms"]},
    )
    assert record.ip == "127.0.0.1"


async def test_unsubscribe_from_everything_on_the_page(stack: Stack) -> None:
    email = new_email()
    wid, link = await footer_link(stack, email)
    action = link.replace("/u/", "/p/")
    response = await stack.http.post(action, content=b"action=all", headers=FORM)
    assert response.status_code == 200 and "unsubscribed" in response.text
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "customer_unsubscribed")
    page = await stack.http.get(action)
    assert "You are unsubscribed from all our marketing emails" in page.text


async def test_a_forged_preference_token_is_refused(stack: Stack) -> None:
    email = new_email()
    _, link = await footer_link(stack, email)
    body, mac = link.removeprefix("/u/").split(".")
    for bad in (f"/p/{body}.{forged(mac)}", "/p/nonsense"):
        for method in ("GET", "POST"):
            response = await stack.http.request(method, bad, content=b"topics=sms", headers=FORM)
            assert response.status_code == 400, (method, bad)
