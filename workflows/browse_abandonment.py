"""Browse abandonment: a contact looked at a product and put nothing in a cart.

1. 4 hours after the view, still no cart, checkout or order: the product with its picture and a
   few like it (`recommendations`: same category, bought together, popular).    -> `browse_1`
   A/B: variant b (`browse_1_b`) only changes the subject.
2. A day later, one more nudge with the product.                               -> `browse_2`

Keyed by the product, so a second view of it while the journey runs only feeds it. At most one
browse journey starts per contact per 7 days (measured on the views' `occurred_at`): ten products
browsed are not ten emails. Only a product in stock starts one. A cart update or a checkout ends
it (the cart flow takes over), an order converts it; before each email the database is asked
again (`not_in_cart_flow`, `no_order_since_start`), so a contact already in the cart flow, or
who ordered, gets nothing from this one even if the event never reached the journey.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.events.schemas import ProductViewed, StoreEventIn
    from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry


@workflow.defn(name="browse_abandonment")
class BrowseAbandonment(Journey):
    flow = "browse_abandonment"
    triggers = ("product_viewed",)
    exit_goals = {
        "cart_updated": JourneyStatus.EXITED,
        "checkout_started": JourneyStatus.EXITED,
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }
    filters = ("not_in_cart_flow", "no_order_since_start")
    reentry = Reentry.every(days=7)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=4)
        await self.send("browse_1", variants={"a": "browse_1", "b": "browse_1_b"})
        await self.wait(days=1)
        await self.send("browse_2")

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        return event.product.id if isinstance(event, ProductViewed) else None

    @classmethod
    def should_start(cls, event: StoreEventIn) -> bool:
        return isinstance(event, ProductViewed) and event.product.in_stock
