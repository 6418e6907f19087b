"""Post-purchase: from the order confirmation to the next purchase, one journey per order.

1. At once: the order confirmation (transactional).                               -> `pp_confirmation`
2. When the store reports the shipment (`order_shipped`, waited for up to 14 days): the shipping
   update with the tracking link (transactional).                                 -> `pp_shipped`
   No shipment reported in 14 days: no shipping email, the story goes on.
3. Five days later, about two days after delivery: a guide to using the products. -> `pp_guide`
4. A week later: a satisfaction survey and a review request.                      -> `pp_review`
   A/B test of the subject: half the contacts (fixed per contact) get `pp_review_b`, which
   names the product.
5. A week later: a cross-sell of products that go with what was bought.           -> `pp_cross_sell`

A refund of this order ends the journey (a refund of another order of the same contact does
not). Unsubscribing is no exit goal: the confirmation and the shipping update are transactional
and still go out, while the marketing steps re-check consent and end the journey if it is gone.
Each order gets its own journey, once.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.events.schemas import OrderPlaced, OrderRefunded, OrderShipped, StoreEventIn
    from nudge.journeys.contracts import JourneyEvent, JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry


@workflow.defn(name="post_purchase")
class PostPurchase(Journey):
    flow = "post_purchase"
    triggers = ("order_placed",)
    listens = ("order_shipped",)
    exit_goals = {"order_refunded": JourneyStatus.EXITED}
    reentry = Reentry.per_key()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.send("pp_confirmation", transactional=True)
        if await self.wait_for("order_shipped", days=14) is not None:
            await self.send("pp_shipped", transactional=True)
        await self.wait(days=5)
        await self.send("pp_guide")
        await self.wait(days=7)
        await self.send("pp_review", variants={"a": "pp_review", "b": "pp_review_b"})
        await self.wait(days=7)
        await self.send("pp_cross_sell")

    def on_event(self, event: JourneyEvent) -> None:
        # Exit goals are signalled to every open journey of this flow for the contact: only a
        # refund of this journey's own order ends it.
        if event.type == "order_refunded" and event.order_id != self.input.key:
            return
        super().on_event(event)

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        if isinstance(event, OrderPlaced | OrderShipped | OrderRefunded):
            return event.order.id
        return None
