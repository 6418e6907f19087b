"""Price drop: a product a contact viewed in the last 30 days got cheaper (`POST /v1/products`
raises `price_dropped` with the old and the new price, nudge/commerce/catalog.py).

1. An hour after the drop (an order placed meanwhile, often by someone who saw the new price on
   the site, ends the journey before any email): the product, its old price struck through and
   the new one.                                                               -> `price_drop_1`
   A/B: variant b (`price_drop_1_b`) only changes the subject.

Keyed by the product; at most one price-drop journey per contact per 30 days (`Reentry.every`),
whichever product it is about. Any order converts it; before the email the database is asked
again (`no_order_since_start`, and `product_in_stock`: a product sold out meanwhile is not
announced).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.events.schemas import StoreEventIn, product_of
    from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry


@workflow.defn(name="price_drop")
class PriceDrop(Journey):
    flow = "price_drop"
    triggers = ("price_dropped",)
    exit_goals = {
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }
    filters = ("no_order_since_start", "product_in_stock")
    reentry = Reentry.every(days=30)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=1)
        await self.send("price_drop_1", variants={"a": "price_drop_1", "b": "price_drop_1_b"})

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        product = product_of(event)
        return product.id if product else None
