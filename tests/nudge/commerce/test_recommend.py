"""Recommendations on SQLite and PostgreSQL. Each exclusion rule is proven on each strategy by a
product that ranks first until the rule applies to it. The database is shared, so every test
has its own products (a unique prefix) and its own 90-day window (`now` years ahead)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.commerce import recommend
from nudge.commerce.recommend import Exclude, Recommendation
from nudge.contacts import directory
from nudge.events import schemas as ev
from nudge.storage.models import Order, OrderLine, Product
from support import new_email, new_id

Sessions = async_sessionmaker[AsyncSession]
# Each test's window: orders of one test never fall in another's.
_years = itertools.count(2300)


class World:
    """Products and orders of one test."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.prefix = new_id("rec")
        self.now = datetime(next(_years), 6, 1, tzinfo=UTC)

    def id(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def name(self, product_id: str) -> str:
        return product_id.removeprefix(f"{self.prefix}_")

    async def contact(self) -> int:
        async with self.sessions.begin() as session:
            return await directory.upsert_contact(session, ev.ContactIn(email=new_email()))

    async def products(self, *names: str, category: str = "cat") -> None:
        async with self.sessions.begin() as session:
            session.add_all(
                Product(
                    id=self.id(name),
                    title=name,
                    image_url=f"https://shop.example/img/{name}.jpg",
                    price=Decimal("10.00"),
                    currency="EUR",
                    category=self.id(category),
                )
                for name in names
            )

    async def order(
        self, contact_id: int, *names: str, days_ago: float = 1, count: int = 1
    ) -> None:
        async with self.sessions.begin() as session:
            for _ in range(count):
                order_id = new_id("o")
                session.add(
                    Order(
                        id=order_id,
                        contact_id=contact_id,
                        currency="EUR",
                        total=Decimal("10.00") * len(names),
                        placed_at=self.now - timedelta(days=days_ago),
                    )
                )
                await session.flush()
                session.add_all(
                    OrderLine(
                        order_id=order_id,
                        position=i,
                        product_id=self.id(name),
                        title=name,
                        price=Decimal("10.00"),
                        quantity=1,
                    )
                    for i, name in enumerate(names)
                )

    async def change(self, name: str, **values: object) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(Product).where(Product.id == self.id(name)).values(values))

    def names(self, found: Sequence[Recommendation]) -> list[str]:
        return [self.name(r.product.id) for r in found]


Strategy = Callable[[AsyncSession, World, Exclude], Awaitable[list[Recommendation]]]


async def _bought_together(
    session: AsyncSession, w: World, exclude: Exclude
) -> list[Recommendation]:
    return await recommend.bought_together(session, [w.id("seed")], exclude=exclude, limit=10)


async def _popular(session: AsyncSession, w: World, exclude: Exclude) -> list[Recommendation]:
    return await recommend.popular(session, w.now, exclude=exclude, limit=10)


async def _similar(session: AsyncSession, w: World, exclude: Exclude) -> list[Recommendation]:
    return await recommend.similar(session, [w.id("seed")], exclude=exclude, limit=10)


STRATEGIES: dict[str, Strategy] = {
    "bought_together": _bought_together,
    "popular": _popular,
    "similar": _similar,
}


@pytest.mark.parametrize("rule", ["already_bought", "in_cart", "out_of_stock", "no_image"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
async def test_every_exclusion_removes_what_would_rank_first(
    sessions: Sessions, strategy: str, rule: str
) -> None:
    w = World(sessions)
    # `a_star` shares 3 orders with the seed, `b_runner` 1; both are in the seed's category
    # (where `a_star` wins the tie on its id).
    await w.products("seed", "a_star", "b_runner")
    shoppers = [await w.contact() for _ in range(3)]
    for shopper in shoppers:
        await w.order(shopper, "seed", "a_star")
    await w.order(shoppers[0], "seed", "b_runner")
    buyer = await w.contact()  # the contact the recommendations are for
    cart = {w.id("seed")}

    async def ranked(exclude: Exclude) -> list[str]:
        async with sessions() as session:
            return w.names(await STRATEGIES[strategy](session, w, exclude))

    assert (await ranked(Exclude(contact_id=buyer, product_ids=cart)))[:2] == [
        "a_star",
        "b_runner",
    ]
    exclude = Exclude(contact_id=buyer, product_ids=cart)
    if rule == "already_bought":
        await w.order(buyer, "a_star", days_ago=400)  # long ago: still bought
        # For anyone else it still ranks first.
        assert (await ranked(Exclude(contact_id=await w.contact(), product_ids=cart)))[0] == (
            "a_star"
        )
    elif rule == "in_cart":
        exclude = Exclude(contact_id=buyer, product_ids=cart | {w.id("a_star")})
    elif rule == "out_of_stock":
        await w.change("a_star", in_stock=False)
    else:
        await w.change("a_star", image_url=None)
    assert await ranked(exclude) == ["b_runner"]

    if rule in ("out_of_stock", "no_image"):  # and back again
        await w.change("a_star", in_stock=True, image_url="https://shop.example/img/a.jpg")
        assert (await ranked(exclude))[0] == "a_star"


async def test_the_seed_and_the_cart_are_never_recommended(sessions: Sessions) -> None:
    w = World(sessions)
    await w.products("seed", "other", "x")
    shopper = await w.contact()
    await w.order(shopper, "seed", "other", count=3)
    await w.order(shopper, "x")
    async with sessions() as session:
        popular = await recommend.popular(session, w.now, limit=10)
        mine = [r for r in popular if r.product.id.startswith(w.prefix)]
        assert w.names(mine) == ["other", "seed", "x"]
        # Through `recommend`, the cart is excluded from every strategy.
        found = await recommend.recommend(session, await w.contact(), [w.id("seed")], w.now, 10)
    assert "seed" not in w.names(found)


async def test_bought_together_counts_shared_orders(sessions: Sessions) -> None:
    w = World(sessions)
    await w.products("seed", "seed2", "one", "two", "three", "lonely")
    s = await w.contact()
    await w.order(s, "seed", "three", count=3)
    await w.order(s, "seed2", "two", count=2)
    await w.order(s, "seed", "seed2", "one")  # one order with both seeds counts once
    await w.order(s, "lonely", count=5)
    async with sessions() as session:
        found = await recommend.bought_together(session, [w.id("seed"), w.id("seed2")], limit=10)
        top = await recommend.bought_together(session, [w.id("seed")], limit=1)
        none = await recommend.bought_together(session, [], limit=10)
    assert [(w.name(r.product.id), r.score, r.strategy) for r in found] == [
        ("three", 3, "bought_together"),
        ("two", 2, "bought_together"),
        ("one", 1, "bought_together"),
    ]
    assert w.names(top) == ["three"] and none == []


async def test_popular_counts_orders_in_the_window_only(sessions: Sessions) -> None:
    w = World(sessions)
    await w.products("recent", "old", "future", "edge")
    s = await w.contact()
    await w.order(s, "recent", days_ago=89, count=2)
    await w.order(s, "edge", days_ago=1)
    await w.order(s, "old", days_ago=91, count=5)  # outside the 90 days
    await w.order(s, "future", days_ago=-1, count=5)  # after `now`
    async with sessions() as session:
        found = await recommend.popular(session, w.now, limit=500)
        shorter = await recommend.popular(session, w.now, days=30, limit=500)
    mine = [(w.name(r.product.id), r.score) for r in found if r.product.id.startswith(w.prefix)]
    assert mine == [("recent", 2), ("edge", 1)]
    assert [w.name(r.product.id) for r in shorter if r.product.id.startswith(w.prefix)] == ["edge"]


async def test_similar_is_the_same_category_most_shared_first(sessions: Sessions) -> None:
    w = World(sessions)
    await w.products("seed_a", "shirt_2", "shirt_1", category="shirts")
    await w.products("seed_b", "scarf_1", category="scarves")
    await w.products("seed_c", "hat", category="hats")
    await w.products("shoe", category="shoes")
    async with w.sessions.begin() as session:  # a seed without a category finds nothing
        session.add(Product(id=w.id("plain"), title="plain", image_url="https://x.example/i"))
    async with sessions() as session:
        found = await recommend.similar(
            session, [w.id("seed_a"), w.id("seed_b"), w.id("seed_c")], limit=10
        )
        two_shirts = await recommend.similar(session, [w.id("seed_a"), w.id("shirt_1")], limit=10)
        plain = await recommend.similar(session, [w.id("plain")], limit=10)
    # Ties (one seed each) by product id.
    assert w.names(found) == ["hat", "scarf_1", "shirt_1", "shirt_2"]
    assert [(w.name(r.product.id), r.score) for r in two_shirts] == [("shirt_2", 2)]
    assert plain == []


async def test_recommend_blends_bought_together_then_similar_then_popular(
    sessions: Sessions,
) -> None:
    w = World(sessions)
    await w.products("seed", "sim", category="shirts")
    await w.products("bt1", "bt2", "pop", "pop2", category="misc")
    s = await w.contact()
    await w.order(s, "seed", "bt1", count=2)
    await w.order(s, "seed", "bt2")
    await w.order(s, "pop", count=4)
    await w.order(s, "pop2", count=3)
    buyer = await w.contact()
    await w.order(buyer, "pop2", days_ago=200)  # bought by the contact: never recommended

    async with sessions() as session:
        three = await recommend.recommend(session, buyer, [w.id("seed")], w.now)
        more = await recommend.recommend(session, buyer, [w.id("seed")], w.now, limit=10)
        again = await recommend.recommend(session, buyer, [w.id("seed")], w.now, limit=10)
    assert [(w.name(r.product.id), r.strategy) for r in three] == [
        ("bt1", "bought_together"),
        ("bt2", "bought_together"),
        ("sim", "similar"),
    ]
    mine = [(w.name(r.product.id), r.strategy) for r in more if r.product.id.startswith(w.prefix)]
    assert mine == [
        ("bt1", "bought_together"),
        ("bt2", "bought_together"),
        ("sim", "similar"),
        ("pop", "popular"),
    ]
    # Deterministic: the same data, the same list, in the same order.
    assert [r.product.id for r in again] == [r.product.id for r in more]
    assert len(more) == len({r.product.id for r in more})


async def test_ties_are_broken_by_product_id(sessions: Sessions) -> None:
    w = World(sessions)
    names = ["d", "a", "c", "b"]
    await w.products("seed", *names)
    s = await w.contact()
    for name in names:
        await w.order(s, "seed", name)
    async with sessions() as session:
        runs = [
            w.names(await recommend.bought_together(session, [w.id("seed")], limit=10))
            for _ in range(3)
        ]
    assert runs == [["a", "b", "c", "d"]] * 3
