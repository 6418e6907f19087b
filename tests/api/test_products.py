"""`POST /v1/products`: the catalogue, and the `back_in_stock` / `price_dropped` events a restock or
a price drop raises for the contacts who asked or viewed, routed to flows (test-only flows on a
real worker) exactly once, even across an interrupted post and its retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest_asyncio
from sqlalchemy import select, update
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from catalog_support import ago, post_products, product, product_event
from conftest import open_stack
from nudge.commerce import catalog
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.journeys.contracts import JourneyInput, JourneyState
from nudge.storage.models import Product, StoreEvent
from support import Stack, journey_id, new_email, new_id, order_event
from workflows.journey import Journey


class _Watch(Journey):
    async def story(self) -> None:
        await self.wait(hours=1)

    @classmethod
    def journey_key(cls, event: ev.StoreEventIn) -> str | None:
        found = ev.product_of(event)
        return found.id if found else None


@workflow.defn(name="test_restock_watch", sandboxed=False)
class RestockWatch(_Watch):
    flow = "test_restock_watch"
    triggers = ("back_in_stock",)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)


@workflow.defn(name="test_price_watch", sandboxed=False)
class PriceWatch(_Watch):
    flow = "test_price_watch"
    triggers = ("price_dropped",)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)


@pytest_asyncio.fixture(loop_scope="session")
async def catalog_stack(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> AsyncIterator[Stack]:
    flows = [RestockWatch, PriceWatch]
    async with open_stack(time_env, temporal, db_url, mailcatcher, flows=flows) as stack:
        yield stack


async def contact_id(stack: Stack, email: str) -> int:
    response = await stack.http.get(
        f"/v1/contacts/{email}/journeys", headers={"Authorization": "Bearer test-key"}
    )
    assert response.status_code == 200, response.text
    return int(response.json()["contact_id"])


async def derived(stack: Stack, product_id: str) -> list[StoreEvent]:
    async with stack.sessions() as session:
        rows = await session.scalars(
            select(StoreEvent)
            .where(
                StoreEvent.product_id == product_id,
                StoreEvent.type.in_(catalog.DERIVED_TYPES),
            )
            .order_by(StoreEvent.contact_id)
        )
        return list(rows)


async def test_bad_products_are_refused_naming_the_field(catalog_stack: Stack) -> None:
    stack = catalog_stack
    bad = [product(new_id("p")), product(new_id("p"), price=12.5)]
    response = await post_products(stack, *bad)
    assert response.status_code == 422
    fields = [f["field"] for f in response.json()["error"]["fields"]]
    assert fields == ["products.1.price"]

    response = await post_products(stack, product("has space"), {"id": new_id("p")})
    fields = [f["field"] for f in response.json()["error"]["fields"]]
    assert fields == ["products.0.id", "products.1.title"]

    bodies: list[dict[str, Any]] = [{}, {"products": []}, {"products": [product("p")] * 501}]
    for body in bodies:
        response = await stack.http.post(
            "/v1/products", json=body, headers={"Authorization": "Bearer test-key"}
        )
        assert response.status_code == 422
        assert [f["field"] for f in response.json()["error"]["fields"]] == ["products"]

    response = await stack.http.post(
        "/v1/products", json={"products": [product(new_id("p"))]}, headers={}
    )
    assert response.status_code == 401


async def test_upsert_keeps_what_a_post_leaves_out(catalog_stack: Stack) -> None:
    stack, pid = catalog_stack, new_id("p")
    response = await post_products(stack, product(pid, category="linen"))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "products": 1,
        "back_in_stock": 0,
        "price_dropped": 0,
        "journeys": [],
    }
    response = await post_products(stack, {"id": pid, "title": "Linen shirt II", "in_stock": False})
    assert response.status_code == 200, response.text
    async with stack.sessions() as session:
        row = await session.get(Product, pid)
    assert row is not None
    assert (row.title, row.price, row.category, row.in_stock) == (
        "Linen shirt II",
        Decimal("49.00"),
        "linen",
        False,
    )
    assert (row.catalog_in_stock, row.catalog_price) == (False, Decimal("49.00"))


async def test_restock_tells_who_asked_or_viewed_lately_and_has_not_bought_it(
    catalog_stack: Stack,
) -> None:
    stack, pid = catalog_stack, new_id("p")
    # Without a picture, so that, once ordered, it is never recommended in other tests' emails.
    out = product(pid, in_stock=False, image_url=None)
    asked, viewed, stale, bought, unsubscribed, elsewhere = (new_email() for _ in range(6))
    events = [
        product_event(asked, out, type="back_in_stock_requested", occurred_at=ago(days=20)),
        product_event(viewed, out, occurred_at=ago(days=2)),
        product_event(stale, out, occurred_at=ago(days=31)),
        product_event(bought, out, occurred_at=ago(days=3)),
        product_event(unsubscribed, out, occurred_at=ago(days=1)),
        product_event(elsewhere, product(new_id("p")), occurred_at=ago(days=1)),
    ]
    order = order_event(bought, new_id("order"), occurred_at=ago(days=1))
    order["order"]["lines"][0]["product_id"] = pid
    unsubscribe = {
        "id": new_id("evt"),
        "type": "customer_unsubscribed",
        "occurred_at": ago(hours=1),
        "contact": {"email": unsubscribed},
    }
    response = await stack.post([*events, order, unsubscribe])
    assert response.status_code == 202, response.text
    assert (await post_products(stack, out)).json()["back_in_stock"] == 0

    response = await post_products(stack, product(pid, in_stock=True, image_url=None))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["back_in_stock"], body["price_dropped"]) == (2, 0)
    ids = sorted([await contact_id(stack, asked), await contact_id(stack, viewed)])
    # Sorted as text on both sides: contact ids 99 and 100 sort the other way as numbers.
    assert sorted(body["journeys"]) == sorted(
        [await journey_id(stack, "test_restock_watch", c, pid) for c in ids]
    )

    rows = await derived(stack, pid)
    assert [(r.type, r.contact_id) for r in rows] == [("back_in_stock", c) for c in ids]
    assert all(r.routed_at is not None for r in rows)
    event = ev.stored_event_adapter.validate_python(rows[0].payload)
    assert isinstance(event, ev.BackInStock) and event.product.id == pid
    state = await stack.finish(body["journeys"][0])
    assert (state.flow, state.key) == ("test_restock_watch", pid)

    # Still in stock: nothing new to tell; out and back in again: told again.
    assert (await post_products(stack, product(pid, image_url=None))).json()["back_in_stock"] == 0
    await post_products(stack, out)
    assert (await post_products(stack, product(pid, image_url=None))).json()["back_in_stock"] == 2
    assert len(await derived(stack, pid)) == 4


async def test_a_request_for_an_unknown_product_counts_it_out_of_stock(
    catalog_stack: Stack,
) -> None:
    stack, pid, email = catalog_stack, new_id("p"), new_email()
    await stack.post(product_event(email, product(pid), type="back_in_stock_requested"))
    # A view that leaves `in_stock` to its default does not hide the restock either.
    await stack.post(product_event(new_email(), {"id": pid, "title": "Linen shirt"}))
    body = (await post_products(stack, product(pid))).json()
    assert body["back_in_stock"] == 2


async def test_price_drop_tells_recent_viewers_with_old_and_new_price(
    catalog_stack: Stack,
) -> None:
    stack, pid = catalog_stack, new_id("p")
    viewer, requester = new_email(), new_email()
    await post_products(stack, product(pid, price="49.00"))
    await stack.post(product_event(viewer, product(pid, price="49.00")))
    # Asking to be told of a restock is no interest in the price.
    await stack.post(product_event(requester, product(pid), type="back_in_stock_requested"))
    # A later view already carries the new price: the drop is still the catalogue's news.
    await stack.post(product_event(viewer, product(pid, price="39.00")))

    assert (await post_products(stack, product(pid, price="59.00"))).json()["price_dropped"] == 0
    response = await post_products(stack, product(pid, price="39.00"))
    body = response.json()
    assert (body["back_in_stock"], body["price_dropped"]) == (0, 1)
    assert body["journeys"] == [
        await journey_id(stack, "test_price_watch", await contact_id(stack, viewer), pid)
    ]
    [row] = await derived(stack, pid)
    event = ev.stored_event_adapter.validate_python(row.payload)
    assert isinstance(event, ev.PriceDropped)
    assert (event.price.old, event.price.new) == (Decimal("59.00"), Decimal("39.00"))
    async with stack.sessions() as session:
        assert await catalog.price_change(session, row.id) == event.price

    # A price given in another currency is no drop; neither is a drop while out of stock.
    assert (await post_products(stack, product(pid, price="9.00", currency="USD"))).json()[
        "price_dropped"
    ] == 0
    out = product(pid, price="5.00", in_stock=False, currency="USD")
    assert (await post_products(stack, out)).json()["price_dropped"] == 0


async def test_an_interrupted_post_is_routed_by_its_retry_and_raises_nothing_twice(
    catalog_stack: Stack,
) -> None:
    stack, pid, email = catalog_stack, new_id("p"), new_email()
    await stack.post(product_event(email, product(pid, in_stock=False)))
    await post_products(stack, product(pid, in_stock=False, price="49.00"))
    restock = product(pid, in_stock=True, price="39.00")
    # The post's first transaction commits, then the API dies before routing anything.
    async with stack.sessions.begin() as session:
        assert await catalog.apply(session, [ev.ProductIn.model_validate(restock)]) == 2
    rows = await derived(stack, pid)
    assert [(r.type, r.routed_at) for r in rows] == [
        ("back_in_stock", None),
        ("price_dropped", None),
    ] or [(r.type, r.routed_at) for r in rows] == [
        ("price_dropped", None),
        ("back_in_stock", None),
    ]

    response = await post_products(stack, restock)
    body = response.json()
    assert (body["back_in_stock"], body["price_dropped"]) == (1, 1)
    cid = await contact_id(stack, email)
    assert sorted(body["journeys"]) == [
        await journey_id(stack, "test_price_watch", cid, pid),
        await journey_id(stack, "test_restock_watch", cid, pid),
    ]
    assert all(r.routed_at is not None for r in await derived(stack, pid))

    again = (await post_products(stack, restock)).json()
    assert (again["back_in_stock"], again["price_dropped"], again["journeys"]) == (0, 0, [])
    assert len(await derived(stack, pid)) == 2


async def test_the_same_change_seen_twice_is_stored_once(catalog_stack: Stack) -> None:
    """Derived ids depend only on the change: a second transaction that saw the product as the
    first did (a race the row lock prevents on PostgreSQL) stores nothing more."""
    stack, pid, email = catalog_stack, new_id("p"), new_email()
    await stack.post(product_event(email, product(pid, in_stock=False)))
    async with stack.sessions() as session:
        row = await session.get(Product, pid)
    assert row is not None
    seen = (row.in_stock, row.catalog_in_stock, row.price, row.catalog_price, row.updated_at)
    restock = ev.ProductIn.model_validate(product(pid))
    async with stack.sessions.begin() as session:
        assert await catalog.apply(session, [restock]) == 1
    async with stack.sessions.begin() as session:
        await session.execute(
            update(Product)
            .where(Product.id == pid)
            .values(
                in_stock=seen[0],
                catalog_in_stock=seen[1],
                price=seen[2],
                catalog_price=seen[3],
                updated_at=seen[4],
            )
        )
    async with stack.sessions.begin() as session:
        assert await catalog.apply(session, [restock]) == 0
    [stored] = await derived(stack, pid)
    assert stored.id.startswith(f"back_in_stock:{stored.contact_id}:")
