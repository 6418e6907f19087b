"""Tracking, attribution and reports on the real stack: journeys send real emails, the test opens
and clicks through the tracked links of those emails (real endpoints), places attributed and
unattributed orders, and checks every figure of the report against a hand count."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest_asyncio
from sqlalchemy import func, select, update
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import CaughtMessage, MailCatcher
from nudge.events import schemas as ev
from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus
from nudge.keys import keyring
from nudge.mail import tracking
from nudge.mail.render import RenderedEmail
from nudge.settings import Settings
from nudge.storage.installation import load_installation_id
from nudge.storage.models import (
    Contact,
    ContactTag,
    Message,
    MessageEvent,
    Segment,
    SegmentMember,
    utcnow,
)
from support import Stack, cart_event, forged, new_email, new_id, order_event
from workflows.journey import Journey

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Version/17.1 Safari"
APPLE_PROXY = "Mozilla/5.0"


@workflow.defn(name="test_tracked_cart", sandboxed=False)
class TrackedCart(Journey):
    """Test-only: the cart abandonment story under a flow name of its own, so that the flow's
    figures in a shared test database are this test's alone."""

    flow = "test_tracked_cart"
    triggers = ("cart_updated",)
    exit_goals = {
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=2)
        await self.send("cart_1")
        await self.wait(days=1)
        await self.send("cart_2")
        await self.wait(days=1)
        await self.send("cart_3")

    @classmethod
    def journey_key(cls, event: ev.StoreEventIn) -> str | None:
        cart = ev.cart_of(event)
        return cart.token if cart else None


@pytest_asyncio.fixture(loop_scope="session")
async def tracked(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> AsyncIterator[Stack]:
    async with open_stack(time_env, temporal, db_url, mailcatcher, flows=[TrackedCart]) as stack:
        yield stack


def hrefs(caught: CaughtMessage) -> list[str]:
    assert caught.html is not None
    return [html.unescape(h) for h in re.findall(r'<a\b[^>]*\bhref="([^"]+)"', caught.html)]


def pixel(caught: CaughtMessage) -> str:
    assert caught.html is not None
    [src] = re.findall(r'<img src="([^"]+/t/o/[^"]+\.gif)"', caught.html)
    return "/" + str(src).split("/", 3)[3]


def path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def tracked_links(stack: Stack, caught: CaughtMessage) -> dict[str, str]:
    """Original URL -> the tracked link in the email that leads to it."""
    found: dict[str, str] = {}
    for href in hrefs(caught):
        if "/t/c/" in href:
            claims = tracking.verify_click(keyring(stack.settings), href.rsplit("/", 1)[1])
            found[claims.url] = href
    return found


async def start(stack: Stack, email: str, token: str) -> str:
    response = await stack.post(cart_event(email, token))
    assert response.status_code == 202, response.text
    [wid] = response.json()["results"][0]["journeys"]
    return str(wid)


async def set_sent_at(stack: Stack, message_id: str, at: datetime) -> None:
    async with stack.sessions.begin() as session:
        await session.execute(
            update(Message).where(Message.message_id == message_id).values(sent_at=at)
        )


async def add_event(stack: Stack, message_id: str, kind: str) -> None:
    """What the bounce and complaint webhooks record (another part of Nudge)."""
    async with stack.sessions.begin() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        session.add(MessageEvent(message_id=message_id, contact_id=message.contact_id, kind=kind))


async def report(stack: Stack, flow: str, **params: str) -> dict[str, Any]:
    response = await stack.http.get(
        f"/v1/reports/flows/{flow}",
        params=params,
        headers={"Authorization": f"Bearer {stack.settings.api_key}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_opens_clicks_orders_and_every_figure(tracked: Stack) -> None:
    stack = tracked
    a, b, c, d = (new_email() for _ in range(4))
    tokens = {e: new_id("cart") for e in (a, b, c, d)}
    wids = {e: await start(stack, e, tokens[e]) for e in (a, b, c, d)}
    await stack.env.sleep(timedelta(hours=3))
    first = {e: stack.mail_to(e)[0] for e in (a, b, c, d)}
    mids = {e: str(first[e].message_id) for e in (a, b, c, d)}

    # Every link but the unsubscribe link goes through the redirect; the header stays direct.
    mail = first[a]
    links = tracked_links(stack, mail)
    checkout = f"https://shop.example/checkout/{tokens[a]}"
    assert set(links) == {checkout, "https://shop.example/p/p1", stack.settings.public_url}
    direct = [h for h in hrefs(mail) if "/t/c/" not in h]
    assert len(direct) == 1 and "/u/" in direct[0]
    assert "/t/" not in str(mail.message["List-Unsubscribe"])
    assert mail.text is not None and checkout not in mail.text and "/t/c/" in mail.text
    assert path(direct[0]) in mail.text  # the text part's unsubscribe link is direct too

    # Read a minute after arrival: A opens and clicks through to the checkout, B only opens.
    for e in (a, b, d):
        await set_sent_at(stack, mids[e], utcnow() - timedelta(minutes=1))
    headers = {"User-Agent": BROWSER}
    for e in (a, b):
        response = await stack.http.get(pixel(first[e]), headers=headers)
        assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
        assert response.content.startswith(b"GIF89a")
    response = await stack.http.get(path(links[checkout]), headers=headers)
    assert response.status_code == 302 and response.headers["location"] == checkout
    # C's mail is fetched by Apple's privacy proxy and its link followed by a gateway scanner
    # the moment it arrives: both recorded, neither counted as a person.
    await set_sent_at(stack, mids[c], utcnow())
    await stack.http.get(pixel(first[c]), headers={"User-Agent": APPLE_PROXY})
    c_links = tracked_links(stack, first[c])
    scanned = await stack.http.get(path(next(iter(c_links.values()))), headers=headers)
    assert scanned.status_code == 302

    # A orders an hour later (attributed to the click), D without having opened anything, B
    # six days later: past the 5-day open window.
    now = utcnow()
    orders = {a: now + timedelta(hours=1), d: now + timedelta(hours=1), b: now + timedelta(days=6)}
    for e, at in orders.items():
        body = order_event(e, new_id("order"), cart_token=tokens[e], occurred_at=at.isoformat())
        assert (await stack.post(body)).status_code == 202
    for e in (a, b, d):
        assert (await stack.finish(wids[e])).status == JourneyStatus.CONVERTED
    state = await stack.finish(wids[c])
    assert [m.step for m in state.emails] == ["cart_1", "cart_2", "cart_3"]
    c2, c3 = stack.mail_to(c)[1:]

    # The webhooks of the delivery side: B complains about cart_1, C's cart_2 bounces.
    await add_event(stack, mids[b], "complaint")
    await add_event(stack, str(c2.message_id), "bounce")
    # A scanner that waits out the send window still hits every link of cart_3 at once.
    await set_sent_at(stack, str(c3.message_id), utcnow() - timedelta(minutes=5))
    for link in tracked_links(stack, c3).values():
        assert (await stack.http.get(path(link), headers=headers)).status_code == 302
    # And C unsubscribes with the header of cart_3 (twice: counted once).
    [unsubscribe] = re.findall(r"<(https?://[^>]+)>", str(c3.message["List-Unsubscribe"]))
    for _ in range(2):
        assert (await stack.http.post(path(unsubscribe))).status_code == 200

    async with stack.sessions() as session:
        flags = (
            await session.execute(
                select(MessageEvent.message_id, MessageEvent.kind, MessageEvent.machine)
                .where(MessageEvent.message_id.in_([*mids.values(), str(c3.message_id)]))
                .order_by(MessageEvent.id)
            )
        ).all()
    assert [(m, k, bool(f)) for m, k, f in flags] == [
        (mids[a], "open", False),
        (mids[b], "open", False),
        (mids[a], "click", False),
        (mids[c], "open", True),
        (mids[c], "click", True),
        (mids[b], "complaint", False),
        *[(str(c3.message_id), "click", True)] * 3,
        (str(c3.message_id), "unsubscribe", False),
    ]

    # The six were sent over a few minutes of the wall clock (some moved back by the test): a run
    # at 23:59 UTC splits them across two days of sending. As sent at the first one's moment,
    # they make one day whatever the hour; every open, click and order comes after it.
    six = [*mids.values(), str(c2.message_id), str(c3.message_id)]
    async with stack.sessions.begin() as session:
        first_sent = await session.scalar(
            select(func.min(Message.sent_at)).where(Message.message_id.in_(six))
        )
        assert first_sent is not None
        await session.execute(
            update(Message).where(Message.message_id.in_(six)).values(sent_at=first_sent)
        )

    body = await report(stack, TrackedCart.flow)
    # Sent 6: cart_1 to A, B, C, D and cart_2, cart_3 to C. One bounce: 5 delivered. Human opens
    # A and B; human click A; A's 49.00 order is the one conversion (B's is outside the
    # window, D's follows no email).
    assert body["metrics"] == {
        "sent": 6,
        "delivered": 5,
        "bounced": 1,
        "opens": 2,
        "clicks": 1,
        "machine_opens": 1,
        "machine_clicks": 2,
        "open_rate": 0.4,
        "click_rate": 0.2,
        "click_to_open_rate": 0.5,
        "conversions": 1,
        "conversion_rate": 0.2,
        "revenue": "49.00",
        "revenue_per_recipient": "9.80",
        "unsubscribes": 1,
        "complaints": 1,
    }
    assert [(s["stage"], s["count"]) for s in body["funnel"]] == [
        ("sent", 6),
        ("delivered", 5),
        ("opened", 2),
        ("clicked", 1),
        ("ordered", 1),
    ]
    steps = {s["step"]: s for s in body["steps"]}
    assert list(steps) == ["cart_1", "cart_2", "cart_3"]
    step_1 = steps["cart_1"]["metrics"]
    assert (step_1["sent"], step_1["delivered"], step_1["opens"], step_1["clicks"]) == (4, 4, 2, 1)
    assert (step_1["open_rate"], step_1["click_rate"], step_1["click_to_open_rate"]) == (
        0.5,
        0.25,
        0.5,
    )
    assert (step_1["conversions"], step_1["conversion_rate"], step_1["revenue"]) == (
        1,
        0.25,
        "49.00",
    )
    assert (step_1["revenue_per_recipient"], step_1["complaints"], step_1["unsubscribes"]) == (
        "12.25",
        1,
        0,
    )
    step_2 = steps["cart_2"]["metrics"]
    assert (step_2["sent"], step_2["bounced"], step_2["delivered"]) == (1, 1, 0)
    assert (step_2["open_rate"], step_2["revenue_per_recipient"]) == (None, None)
    step_3 = steps["cart_3"]["metrics"]
    assert (step_3["delivered"], step_3["clicks"], step_3["machine_clicks"]) == (1, 0, 1)
    assert (step_3["unsubscribes"], step_3["click_rate"]) == (1, 0.0)
    assert all(s["variants"] == [] and s["ab"] is None for s in steps.values())
    [day] = body["series"]
    assert (day["day"], day["sent"], day["open_rate"], day["click_rate"], day["revenue"]) == (
        first_sent.date().isoformat(),
        6,
        0.4,
        0.2,
        "49.00",
    )
    assert "NudgeFlow%3D%22test_tracked_cart%22" in body["journeys_url"]
    # Only this installation's journeys (a namespace may hold another database's).
    installation = await load_installation_id(stack.sessions)
    assert f"NudgeInstallation%3D%22{installation}%22" in body["journeys_url"]
    assert body["journeys_url"].startswith("http://localhost:8233/namespaces/default/workflows?")

    # Per segment: A and B only.
    segment_id = new_id("tracked")
    async with stack.sessions.begin() as session:
        # Tagged contacts; membership as the segment refresh would record it.
        definition = {"kind": "tag", "tag": segment_id}
        session.add(Segment(id=segment_id, name="Tracked", definition=definition))
        ids = list(await session.scalars(select(Contact.id).where(Contact.email.in_([a, b]))))
        session.add_all(ContactTag(contact_id=i, tag=segment_id) for i in ids)
        session.add_all(SegmentMember(segment_id=segment_id, contact_id=i) for i in ids)
    narrowed = (await report(stack, TrackedCart.flow, segment=segment_id))["metrics"]
    assert (narrowed["sent"], narrowed["opens"], narrowed["clicks"]) == (2, 2, 1)
    assert (narrowed["revenue"], narrowed["revenue_per_recipient"]) == ("49.00", "24.50")
    assert (narrowed["open_rate"], narrowed["complaints"]) == (1.0, 1)

    # Per period: nothing was sent tomorrow; everything was sent in the last day.
    later = await report(stack, TrackedCart.flow, start=(now + timedelta(days=1)).isoformat())
    assert later["metrics"]["sent"] == 0 and later["series"] == []
    assert (await report(stack, TrackedCart.flow, days="1"))["metrics"] == body["metrics"]

    # The overview lists the flow with the same figures.
    response = await stack.http.get(
        "/v1/reports/flows", headers={"Authorization": f"Bearer {stack.settings.api_key}"}
    )
    [row] = [f for f in response.json()["flows"] if f["flow"] == TrackedCart.flow]
    assert row["metrics"] == body["metrics"]


async def test_a_forged_click_token_is_refused_and_a_valid_one_goes_only_to_its_link(
    tracked: Stack,
) -> None:
    stack, email, token = tracked, new_email(), new_id("cart")
    wid = await start(stack, email, token)
    await stack.env.sleep(timedelta(hours=3))
    [caught] = stack.mail_to(email)
    links = tracked_links(stack, caught)
    checkout = f"https://shop.example/checkout/{token}"
    good = path(links[checkout]).removeprefix("/t/c/")
    body, mac = good.split(".")

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    contact_id, mid, url = base64.urlsafe_b64decode(body + "==").decode().split("\x1f")
    assert url == checkout
    evil = b64(f"{contact_id}\x1f{mid}\x1fhttps://evil.example/phish".encode())
    other_mac = forged(mac)
    open_token = pixel(caught).removeprefix("/t/o/").removesuffix(".gif")
    for bad in (
        f"/t/c/{evil}.{mac}",  # another URL under the genuine signature
        f"/t/c/{body}.{other_mac}",
        f"/t/c/{body}",
        "/t/c/nonsense",
        f"/t/c/{open_token}",  # an open token is not a click token
        f"/t/o/{good}.gif",  # nor the other way round
    ):
        response = await stack.http.get(bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid_token"
        assert "location" not in response.headers
    async with stack.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(MessageEvent).where(MessageEvent.message_id == mid)
        )
    assert count == 0

    # Every tracked link of the email redirects to exactly its own original URL.
    for original, link in links.items():
        response = await stack.http.get(path(link), headers={"User-Agent": BROWSER})
        assert response.status_code == 302 and response.headers["location"] == original
    await stack.finish(wid)


async def test_reports_need_the_key_and_name_bad_parameters(tracked: Stack) -> None:
    stack = tracked
    assert (await stack.http.get("/v1/reports/flows")).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await stack.http.get("/v1/reports/flows", headers=wrong)).status_code == 401
    auth = {"Authorization": f"Bearer {stack.settings.api_key}"}
    response = await stack.http.get("/v1/reports/flows?segment=nope", headers=auth)
    assert (
        response.status_code == 422 and response.json()["error"]["fields"][0]["field"] == "segment"
    )
    response = await stack.http.get("/v1/reports/flows?days=0", headers=auth)
    assert response.status_code == 422
    assert (await stack.http.get("/v1/reports/flows/nope", headers=auth)).status_code == 404
    # The dashboard's sign-in: a cookie derived from the key (not the key), back into the
    # dashboard only.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    refused = await stack.http.post("/dashboard/login", content=b"key=nope", headers=form)
    assert refused.status_code == 401 and "nudge_key" not in refused.cookies
    signed_in = await stack.http.post(
        "/dashboard/login",
        content=f"key={stack.settings.api_key}&next=https://evil.example/".encode(),
        headers=form,
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"
    cookie = signed_in.cookies["nudge_key"]
    assert cookie != stack.settings.api_key
    stack.http.cookies.clear()
    response = await stack.http.get("/v1/reports/flows", headers={"Cookie": f"nudge_key={cookie}"})
    assert response.status_code == 200
    raw = await stack.http.get(
        "/v1/reports/flows", headers={"Cookie": f"nudge_key={stack.settings.api_key}"}
    )
    assert raw.status_code == 401
    stack.http.cookies.clear()
    schema = (await stack.http.get("/openapi.json")).json()
    assert "/v1/reports/flows/{flow}" in schema["paths"]
    assert "FlowReport" in schema["components"]["schemas"]


async def test_the_dashboard_pages_load_their_stylesheet_and_script(tracked: Stack) -> None:
    # The sign-in page links the stylesheet; the files are served without a key (no data in
    # them), and nothing but the dashboard's own two files is.
    page = await tracked.http.get("/dashboard")
    assert page.status_code == 200 and "/dashboard/static/dashboard.css" in page.text
    css = await tracked.http.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert ".cards {" in css.text
    script = await tracked.http.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "async function storePage" in script.text
    for name in ("app.py", "..%2Fapp.py", "../routers/dashboard.py"):
        assert (await tracked.http.get(f"/dashboard/static/{name}")).status_code == 404


def test_text_links_keep_their_punctuation() -> None:
    settings = Settings(secret_key="test-secret", public_url="http://localhost:8000")
    rendered = RenderedEmail(
        subject="s",
        html='<html><body><a href="https://a.example/x?y=1&amp;z=2">x</a>'
        '<a href="https://b.example/y">y</a></body></html>',
        text="See https://a.example/x?y=1&z=2. Or (https://b.example/y), and "
        f"{settings.public_url}/u/abc.def for out; https://c.example/z is not a link.\n",
    )
    out = tracking.instrument(rendered, settings, 7, "m@x")
    [href, _] = re.findall(r'href="([^"]+)"', out.html)
    claims = tracking.verify_click(keyring(settings), html.unescape(href).rsplit("/", 1)[1])
    assert (claims.contact_id, claims.message_id, claims.url) == (
        7,
        "m@x",
        "https://a.example/x?y=1&z=2",
    )
    assert out.html.count("/t/o/") == 1 and out.html.index("/t/o/") < out.html.index("</body>")
    # The text part's URLs the HTML links are tracked; one it does not link stays as written.
    assert re.fullmatch(
        r"See \S+/t/c/\S+\. Or \(\S+/t/c/\S+\), and http://localhost:8000/u/abc\.def for out; "
        r"https://c\.example/z is not a link\.\n",
        out.text,
    )
    assert (
        tracking.instrument(rendered, settings.model_copy(update={"tracking": False}), 7, "m")
        == rendered
    )


def test_machine_fetches_are_told_from_people() -> None:
    assert tracking.machine_agent(BROWSER, "203.0.113.9") is False
    gmail = (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    )
    assert tracking.machine_agent(gmail, "66.249.84.1") is False  # fetched as the reader opens
    for agent, ip in (
        (APPLE_PROXY, "203.0.113.9"),  # Apple Mail Privacy Protection
        (BROWSER, "17.58.100.1"),  # from Apple's network
        ("", None),
        (None, None),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", None),
        ("python-requests/2.32", None),
        ("Mozilla/5.0 HeadlessChrome/120.0", None),
    ):
        assert tracking.machine_agent(agent, ip) is True, agent
    settings = Settings(tracking_scanner_seconds=10)
    sent = utcnow()
    assert tracking.scanner_click(sent, sent + timedelta(seconds=9), settings)
    assert not tracking.scanner_click(sent, sent + timedelta(seconds=10), settings)
    assert not tracking.scanner_click(None, sent, settings)


async def test_data_never_becomes_a_tracked_link(tracked: Stack) -> None:
    """A contact whose first name is a URL gets it as text: no signed redirect from the store's
    domain leads to it, in the HTML part or in the text part."""
    stack, email, token = tracked, new_email(), new_id("cart")
    evil = "https://evil.example/login"
    event = cart_event(email, token)
    event["contact"]["first_name"] = evil
    response = await stack.post(event)
    assert response.status_code == 202, response.text
    await stack.env.sleep(timedelta(hours=3))
    [caught] = stack.mail_to(email)
    assert caught.html is not None and caught.text is not None
    assert evil in caught.text  # the name is shown, as text
    tokens = re.findall(r"/t/c/([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)", caught.html + caught.text)
    assert len(tokens) >= 2  # the template's own links are tracked in both parts
    urls = {tracking.verify_click(keyring(stack.settings), t).url for t in tokens}
    assert f"https://shop.example/checkout/{token}" in urls
    assert not [url for url in urls if "evil" in url]


async def test_replayed_opens_and_clicks_are_counted_not_stored(tracked: Stack) -> None:
    """One valid token replayed a hundred times: one row each for the open and the click (per
    link), with how many times and the first and latest time, not a row per replay."""
    stack, email, token = tracked, new_email(), new_id("cart")
    await start(stack, email, token)
    await stack.env.sleep(timedelta(hours=3))
    [caught] = stack.mail_to(email)
    assert caught.message_id is not None
    await set_sent_at(stack, caught.message_id, utcnow() - timedelta(hours=1))
    checkout = tracked_links(stack, caught)[f"https://shop.example/checkout/{token}"]
    for _ in range(100):
        headers = {"User-Agent": BROWSER}
        assert (await stack.http.get(pixel(caught), headers=headers)).status_code == 200
        assert (await stack.http.get(path(checkout), headers=headers)).status_code == 302
    async with stack.sessions() as session:
        rows = list(
            await session.scalars(
                select(MessageEvent).where(MessageEvent.message_id == caught.message_id)
            )
        )
    assert len(rows) == 2, len(rows)
    assert sorted((r.kind, r.times, r.machine) for r in rows) == [
        ("click", 100, False),
        ("open", 100, False),
    ]
    assert all(r.last_at is not None and r.last_at >= r.at for r in rows)
