"""Back in stock: a product a contact asked about (`back_in_stock_requested`) or viewed while it
was sold out is available again (`POST /v1/products` raises `back_in_stock`, nudge/commerce/catalog.py).

1. At once (quiet hours aside): the product is back, with its picture and a link.
   Smart sending does not apply: this is news the contact asked for.     -> `back_in_stock_1`
   A/B: variant b (`back_in_stock_1_b`) only changes the subject.
2. Two days later, unless they ordered: a reminder that it is still there. -> `back_in_stock_2`

Keyed by the product; one journey per contact and product, ever (`Reentry.per_key()`), so a
product that keeps selling out and coming back does not mail the same people each time. Any
order converts it; before each email the database is asked again (`no_order_since_start`), and
a product sold out again is not announced (`product_in_stock`: that step is skipped).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.events.schemas import StoreEventIn, product_of
    from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry


@workflow.defn(name="back_in_stock")
class BackInStock(Journey):
    flow = "back_in_stock"
    triggers = ("back_in_stock",)
    exit_goals = {
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }
    filters = ("no_order_since_start", "product_in_stock")
    reentry = Reentry.per_key()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.send(
            "back_in_stock_1",
            variants={"a": "back_in_stock_1", "b": "back_in_stock_1_b"},
            smart_sending=False,
        )
        await self.wait(days=2)
        await self.send("back_in_stock_2")

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        product = product_of(event)
        return product.id if product else None
