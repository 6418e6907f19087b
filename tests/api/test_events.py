"""`POST /v1/events`, `GET /v1/contacts/{email}/journeys`, `/healthz` and the published docs,
over HTTP against the real app, worker, Temporal (time-skipping) and database."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from nudge.journeys.contracts import JourneyStatus
from nudge.storage.models import Cart, Contact, JourneyRecord, Order, StoreEvent
from support import Stack, cart_event, journey_id, new_email, new_id, order_event

AUTH = {"Authorization": "Bearer test-key"}

# The public contract, exactly as documented. Tests copy these and only swap in fresh ids.
CONTRACT_CART: dict[str, Any] = {
    "id": "evt_1",
    "type": "cart_updated",
    "occurred_at": "2026-11-23T10:00:00Z",
    "contact": {"email": "ana@example.com", "first_name": "Ana", "timezone": "Europe/Lisbon"},
    "cart": {
        "token": "c1",
        "currency": "EUR",
        "checkout_url": "https://shop.example/checkout/c1",
        "lines": [
            {
                "product_id": "p1",
                "title": "Linen shirt",
                "price": "49.00",
                "quantity": 1,
                "image_url": "https://shop.example/img/p1.jpg",
                "url": "https://shop.example/p/p1",
            }
        ],
    },
}
CONTRACT_ORDER: dict[str, Any] = {
    "id": "evt_2",
    "type": "order_placed",
    "occurred_at": "2026-11-23T11:00:00Z",
    "contact": {"email": "ana@example.com"},
    "order": {
        "id": "o1",
        "cart_token": "c1",
        "currency": "EUR",
        "total": "49.00",
        "lines": [{"product_id": "p1", "title": "Linen shirt", "price": "49.00", "quantity": 1}],
    },
}


def contract_events(email: str, token: str, order_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cart = copy.deepcopy(CONTRACT_CART)
    cart["id"] = new_id("evt")
    cart["contact"]["email"] = email
    cart["cart"]["token"] = token
    cart["cart"]["checkout_url"] = f"https://shop.example/checkout/{token}"
    order = copy.deepcopy(CONTRACT_ORDER)
    order["id"] = new_id("evt")
    order["contact"]["email"] = email
    order["order"]["id"] = order_id
    order["order"]["cart_token"] = token
    return cart, order


async def contact_of(stack: Stack, email: str) -> Contact | None:
    async with stack.sessions() as session:
        return await session.scalar(select(Contact).where(Contact.email == email.lower()))


async def cart_of(stack: Stack, token: str) -> Cart | None:
    async with stack.sessions() as session:
        return await session.scalar(
            select(Cart).where(Cart.token == token).options(selectinload(Cart.lines))
        )


async def event_of(stack: Stack, event_id: str) -> StoreEvent | None:
    async with stack.sessions() as session:
        return await session.get(StoreEvent, event_id)


async def counts(stack: Stack) -> dict[str, int]:
    async with stack.sessions() as session:
        return {
            model.__tablename__: int(
                await session.scalar(select(func.count()).select_from(model)) or 0
            )
            for model in (StoreEvent, JourneyRecord, Cart, Contact, Order)
        }


def error_fields(body: dict[str, Any]) -> list[str]:
    return [f["field"] for f in body["error"]["fields"]]


# ---- the public contract -------------------------------------------------------------------


async def test_contract_events_are_accepted_stored_and_convert_the_journey(stack: Stack) -> None:
    email, token, order_id = new_email(), new_id("c"), new_id("o")
    cart_evt, order_evt = contract_events(email, token, order_id)

    response = await stack.post(cart_evt)

    assert response.status_code == 202, response.text
    contact = await contact_of(stack, email)
    assert contact is not None
    assert (contact.first_name, contact.last_name, contact.timezone, contact.consent) == (
        "Ana",
        None,
        "Europe/Lisbon",
        "implied",
    )
    wid = await journey_id(stack, "cart_abandonment", contact.id, token)
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "results": [{"id": cart_evt["id"], "status": "accepted", "journeys": [wid]}],
    }

    cart = await cart_of(stack, token)
    assert cart is not None
    assert (cart.contact_id, cart.currency, cart.checkout_url) == (
        contact.id,
        "EUR",
        f"https://shop.example/checkout/{token}",
    )
    assert cart.updated_at == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert [
        (line.position, line.product_id, line.title, line.price, line.quantity)
        for line in cart.lines
    ] == [(0, "p1", "Linen shirt", Decimal("49.00"), 1)]
    assert str(cart.lines[0].price) == "49.00"
    assert cart.lines[0].image_url == "https://shop.example/img/p1.jpg"
    assert cart.lines[0].url == "https://shop.example/p/p1"

    stored = await event_of(stack, cart_evt["id"])
    assert stored is not None
    assert (stored.type, stored.contact_id, stored.occurred_at) == (
        "cart_updated",
        contact.id,
        datetime(2026, 11, 23, 10, tzinfo=UTC),
    )
    assert stored.payload == cart_evt
    assert stored.routed_at is not None
    async with stack.sessions() as session:
        journeys = list(
            await session.scalars(select(JourneyRecord).where(JourneyRecord.workflow_id == wid))
        )
    assert [(j.flow, j.contact_id, j.trigger_event_id) for j in journeys] == [
        ("cart_abandonment", contact.id, cart_evt["id"])
    ]

    response = await stack.post(order_evt)

    assert response.status_code == 202, response.text
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "results": [{"id": order_evt["id"], "status": "accepted", "journeys": [wid]}],
    }
    async with stack.sessions() as session:
        order = await session.scalar(
            select(Order).where(Order.id == order_id).options(selectinload(Order.lines))
        )
    assert order is not None
    assert (order.contact_id, order.cart_token, order.currency, order.status) == (
        contact.id,
        token,
        "EUR",
        "placed",
    )
    assert order.total == Decimal("49.00") and str(order.total) == "49.00"
    assert order.placed_at == datetime(2026, 11, 23, 11, tzinfo=UTC)
    assert [(ln.product_id, ln.title, ln.price, ln.quantity) for ln in order.lines] == [
        ("p1", "Linen shirt", Decimal("49.00"), 1)
    ]
    stored = await event_of(stack, order_evt["id"])
    assert stored is not None
    assert (stored.type, stored.payload) == ("order_placed", order_evt)

    state = await stack.finish(wid)
    assert state.status == JourneyStatus.CONVERTED
    assert state.exit_reason == "order_placed"
    assert state.emails == []
    assert stack.mail_to(email) == []

    response = await stack.http.get(f"/v1/contacts/{email}/journeys", headers=AUTH)
    assert response.status_code == 200, response.text
    [journey] = response.json()["journeys"]
    assert (journey["workflow_id"], journey["flow"], journey["status"]) == (
        wid,
        "cart_abandonment",
        "converted",
    )
    assert journey["closed_at"] is not None


# ---- idempotency ---------------------------------------------------------------------------


async def test_same_event_id_twice_is_a_duplicate_and_changes_nothing(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    event = cart_event(email, token)
    first = await stack.post(event)
    assert first.status_code == 202, first.text
    [result] = first.json()["results"]
    assert result["status"] == "accepted" and len(result["journeys"]) == 1
    before = await counts(stack)

    again = await stack.post(event)

    assert again.status_code == 202, again.text
    assert again.json() == {
        "accepted": 0,
        "duplicates": 1,
        "results": [{"id": event["id"], "status": "duplicate", "journeys": []}],
    }
    assert await counts(stack) == before

    # Same id, different content: still the first event, nothing of the second is applied.
    changed = cart_event(
        email,
        token,
        event_id=event["id"],
        occurred_at="2026-11-24T10:00:00Z",
        lines=[{"product_id": "p9", "title": "Wool coat", "price": "199.00", "quantity": 2}],
    )
    changed["contact"]["first_name"] = "Beatriz"
    third = await stack.post(changed)

    assert third.status_code == 202, third.text
    assert third.json()["results"] == [{"id": event["id"], "status": "duplicate", "journeys": []}]
    assert await counts(stack) == before
    cart = await cart_of(stack, token)
    assert cart is not None
    assert [(ln.product_id, ln.quantity) for ln in cart.lines] == [("p1", 1)]
    assert cart.updated_at == datetime(2026, 11, 23, 10, tzinfo=UTC)
    contact = await contact_of(stack, email)
    assert contact is not None and contact.first_name == "Ana"
    stored = await event_of(stack, event["id"])
    assert stored is not None and stored.payload == event


# ---- batches -------------------------------------------------------------------------------


async def test_batch_gets_per_event_results_in_order(stack: Stack) -> None:
    ana, bea = new_email(), new_email()
    ana_cart, bea_cart = new_id("cart"), new_id("cart")
    first = cart_event(ana, ana_cart)
    second = cart_event(bea, bea_cart)
    third = order_event(ana, new_id("order"), cart_token=ana_cart)
    batch = [first, second, third, first]

    response = await stack.post(batch)

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (3, 1)
    assert [(r["id"], r["status"]) for r in body["results"]] == [
        (first["id"], "accepted"),
        (second["id"], "accepted"),
        (third["id"], "accepted"),
        (first["id"], "duplicate"),
    ]
    ana_contact, bea_contact = await contact_of(stack, ana), await contact_of(stack, bea)
    assert ana_contact is not None and bea_contact is not None
    ana_wid = await journey_id(stack, "cart_abandonment", ana_contact.id, ana_cart)
    bea_wid = await journey_id(stack, "cart_abandonment", bea_contact.id, bea_cart)
    assert [r["journeys"] for r in body["results"]] == [[ana_wid], [bea_wid], [ana_wid], []]
    for event in (first, second, third):
        assert await event_of(stack, event["id"]) is not None
    # Finish both: a journey left mid-send when the worker stops would stall the test server.
    assert (await stack.finish(ana_wid)).status == JourneyStatus.CONVERTED
    assert (await stack.finish(bea_wid)).status == JourneyStatus.COMPLETED
    assert stack.mail_to(ana) == []
    assert len(stack.mail_to(bea)) == 3


async def test_batch_with_one_invalid_event_is_rejected_whole(stack: Stack) -> None:
    email = new_email()
    good = cart_event(email, new_id("cart"))
    bad = cart_event(email, new_id("cart"))
    del bad["cart"]["token"]
    before = await counts(stack)

    response = await stack.post([good, bad])

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid"
    assert error_fields(response.json()) == ["1.cart.token"]
    assert "1.cart.token" in response.json()["error"]["message"]
    assert await counts(stack) == before
    assert await event_of(stack, good["id"]) is None
    assert await contact_of(stack, email) is None


# ---- bad input -----------------------------------------------------------------------------


def _drop(path: str) -> Any:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for part in parents:
            target = target[part]
        del target[last]

    return change


def _set(path: str, value: Any) -> Any:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = event
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_drop("contact.email"), "contact.email"),
        (_drop("cart.token"), "cart.token"),
        (_set("cart.lines.0.price", 49.0), "cart.lines.0.price"),
        (_set("contact.email", "not-an-email"), "contact.email"),
        (_set("contact.timezone", "Mars/Olympus_Mons"), "contact.timezone"),
        (_set("occurred_at", "2026-11-23T10:00:00"), "occurred_at"),
        (_set("type", "cart_exploded"), "type"),
        (_drop("type"), "type"),
    ],
    ids=[
        "missing-email",
        "missing-token",
        "float-price",
        "bad-email",
        "unknown-timezone",
        "naive-occurred-at",
        "unknown-type",
        "missing-type",
    ],
)
async def test_bad_event_is_422_naming_the_field(stack: Stack, change: Any, field: str) -> None:
    email = new_email()
    event = cart_event(email, new_id("cart"))
    change(event)

    response = await stack.post(event)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error_fields(response.json())
    assert field in error["message"]
    assert await event_of(stack, event.get("id", "")) is None
    assert await contact_of(stack, email) is None


async def test_bad_event_in_batch_is_named_with_its_index(stack: Stack) -> None:
    events = [cart_event(new_email(), new_id("cart")) for _ in range(3)]
    events[2]["cart"]["lines"][0]["price"] = 49.0
    del events[1]["contact"]["email"]

    response = await stack.post(events)

    assert response.status_code == 422, response.text
    assert error_fields(response.json()) == ["1.contact.email", "2.cart.lines.0.price"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'"an event"', b"42", b"null", b"[]", b'["an event"]'],
    ids=["broken", "empty", "string", "number", "null", "empty-batch", "batch-of-strings"],
)
async def test_body_that_is_not_an_event_is_422(stack: Stack, content: bytes) -> None:
    before = await counts(stack)
    response = await stack.http.post(
        "/v1/events",
        content=content,
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid"
    assert await counts(stack) == before


async def test_line_breaks_in_a_name_are_folded_to_spaces(stack: Stack) -> None:
    email = new_email()
    event = cart_event(email, new_id("cart"))
    event["contact"]["first_name"] = "Ana\r\nBcc: everyone@example.com"
    event["contact"]["last_name"] = "Silva\nSantos"

    response = await stack.post(event)

    assert response.status_code == 202, response.text
    contact = await contact_of(stack, email)
    assert contact is not None
    assert contact.first_name == "Ana Bcc: everyone@example.com"
    assert contact.last_name == "Silva Santos"


# ---- auth ----------------------------------------------------------------------------------


async def test_events_need_the_api_key(stack: Stack) -> None:
    email = new_email()
    event = cart_event(email, new_id("cart"))

    missing = await stack.http.post("/v1/events", json=event)
    wrong = await stack.post(event, key="not-the-key")
    basic = await stack.http.post(
        "/v1/events", json=event, headers={"Authorization": "Basic dGVzdC1rZXk6"}
    )

    for response in (missing, wrong, basic):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
    assert await event_of(stack, event["id"]) is None
    assert await contact_of(stack, email) is None


async def test_journeys_need_the_api_key_and_healthz_does_not(stack: Stack) -> None:
    email = new_email()
    assert (await stack.post(cart_event(email, new_id("cart")))).status_code == 202

    missing = await stack.http.get(f"/v1/contacts/{email}/journeys")
    wrong = await stack.http.get(
        f"/v1/contacts/{email}/journeys", headers={"Authorization": "Bearer nope"}
    )
    for response in (missing, wrong):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "journeys" not in response.json()

    health = await stack.http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


# ---- journeys ------------------------------------------------------------------------------


async def test_journeys_of_unknown_contact_is_404(stack: Stack) -> None:
    response = await stack.http.get(f"/v1/contacts/{new_email()}/journeys", headers=AUTH)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


async def test_journeys_of_a_contact_with_a_cart(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    posted = await stack.post(cart_event(email, token))
    assert posted.status_code == 202, posted.text
    [wid] = posted.json()["results"][0]["journeys"]
    contact = await contact_of(stack, email)
    assert contact is not None

    # Emails are matched case-insensitively, like on the way in.
    response = await stack.http.get(f"/v1/contacts/{email.upper()}/journeys", headers=AUTH)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["contact_id"] == contact.id
    [journey] = body["journeys"]
    assert (
        journey["workflow_id"]
        == wid
        == await journey_id(stack, "cart_abandonment", contact.id, token)
    )
    assert (journey["flow"], journey["status"], journey["closed_at"]) == (
        "cart_abandonment",
        "running",
        None,
    )
    assert journey["run_id"]
    assert isinstance(journey["step"], str) and journey["step"]
    assert datetime.fromisoformat(journey["started_at"]).tzinfo is not None

    state = await stack.finish(wid)
    assert state.status == JourneyStatus.COMPLETED
    response = await stack.http.get(f"/v1/contacts/{email}/journeys", headers=AUTH)
    [journey] = response.json()["journeys"]
    assert (journey["status"], journey["step"]) == ("completed", "cart_3")


# ---- docs ----------------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        mapping = node.get("discriminator", {}).get("mapping", {})
        found += [v for v in mapping.values() if isinstance(v, str)]
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_openapi_documents_the_event_body(stack: Stack) -> None:
    response = await stack.http.get("/openapi.json")
    assert response.status_code == 200, response.text
    spec = response.json()

    post = spec["paths"]["/v1/events"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/StoreEvent"} in schema["oneOf"]
    [array] = [s for s in schema["oneOf"] if s.get("type") == "array"]
    assert array["items"] == {"$ref": "#/components/schemas/StoreEvent"}

    components = spec["components"]["schemas"]
    store_event = components["StoreEvent"]
    assert store_event["discriminator"]["propertyName"] == "type"
    mapping = store_event["discriminator"]["mapping"]
    assert {"cart_updated", "order_placed"} <= set(mapping)
    one_of = [s["$ref"] for s in store_event["oneOf"]]
    assert mapping["cart_updated"] in one_of and mapping["order_placed"] in one_of
    # Every reference in the document resolves to a published schema.
    for ref in _refs(spec):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in components, ref
    cart_updated = components[mapping["cart_updated"].rsplit("/", 1)[1]]
    assert {"id", "type", "occurred_at", "contact", "cart"} <= set(cart_updated["required"])
    # Money is documented as it is accepted: a decimal string, never a number.
    price = components["CartLineIn"]["properties"]["price"]
    assert price["type"] == "string" and "pattern" in price


async def test_docs_page_is_served(stack: Stack) -> None:
    response = await stack.http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text and "swagger" in response.text.lower()


# ---- out of order --------------------------------------------------------------------------


async def test_older_cart_event_does_not_overwrite_a_newer_cart(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    coat = [{"product_id": "p9", "title": "Wool coat", "price": "199.00", "quantity": 1}]
    scarf = [{"product_id": "p7", "title": "Scarf", "price": "19.90", "quantity": 3}]

    newer = await stack.post(cart_event(email, token, occurred_at="2026-11-23T12:00:00Z"))
    older = await stack.post(
        cart_event(email, token, lines=coat, occurred_at="2026-11-23T09:00:00+00:00")
    )

    assert (newer.status_code, older.status_code) == (202, 202)
    cart = await cart_of(stack, token)
    assert cart is not None
    assert [(ln.product_id, ln.quantity) for ln in cart.lines] == [("p1", 1)]
    assert cart.updated_at == datetime(2026, 11, 23, 12, tzinfo=UTC)

    # Later in absolute time although earlier on the clock face: it does replace the cart.
    latest = await stack.post(
        cart_event(email, token, lines=scarf, occurred_at="2026-11-23T08:00:00-05:00")
    )
    assert latest.status_code == 202
    cart = await cart_of(stack, token)
    assert cart is not None
    assert [(ln.product_id, ln.price, ln.quantity) for ln in cart.lines] == [
        ("p7", Decimal("19.90"), 3)
    ]
    assert cart.updated_at == datetime(2026, 11, 23, 13, tzinfo=UTC)


async def test_stale_empty_cart_does_not_end_the_journey(stack: Stack) -> None:
    email, token = new_email(), new_id("cart")
    response = await stack.post(cart_event(email, token, occurred_at="2026-11-23T12:00:00Z"))
    [wid] = response.json()["results"][0]["journeys"]

    stale = await stack.post(cart_event(email, token, lines=[], occurred_at="2026-11-23T09:00:00Z"))
    assert stale.json()["results"][0] == {
        "id": stale.json()["results"][0]["id"],
        "status": "accepted",
        "journeys": [],
    }
    state = await stack.finish(wid)
    assert (state.status, [e.step for e in state.emails]) == (
        "completed",
        ["cart_1", "cart_2", "cart_3"],
    )
