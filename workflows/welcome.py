"""Welcome series: four emails that introduce the store to a new subscriber.

1. At once: a welcome and the story of the brand.                               -> `welcome_1`
   A/B test of the subject: half the contacts (fixed per contact) get `welcome_1_b`, the same
   email under a more personal subject.
2. A day later: an exclusive first-purchase discount, a unique code worth 15 %.  -> `welcome_2`
   Only for contacts who never ordered (a guest buyer who subscribes later skips it).
3. Two days later: personalised recommendations.                                 -> `welcome_3`
4. Three days later: tips for using and looking after the products.              -> `welcome_4`

Buying ends it: an `order_placed` converts the journey wherever it waits, and every send
re-checks the database for an order since the start, so an order whose signal was lost still
stops it; the buyer is in the post-purchase flow by then. Unsubscribing ends it. A contact is
welcomed once in a lifetime: subscribing again later starts nothing.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.events.schemas import StoreEventIn
    from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry

# The first-purchase gift: above the store's usual coupon (NUDGE_COUPON_PERCENT, 10 %), since
# the first order is the one that turns a subscriber into a customer.
FIRST_PURCHASE_PERCENT = 15


@workflow.defn(name="welcome")
class Welcome(Journey):
    flow = "welcome"
    triggers = ("customer_subscribed",)
    exit_goals = {
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }
    filters = ("no_order_since_start",)
    reentry = Reentry.once()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.send("welcome_1", variants={"a": "welcome_1", "b": "welcome_1_b"})
        await self.wait(days=1)
        await self.send(
            "welcome_2",
            filters=("no_order_since_start", "never_ordered"),
            offer_percent=FIRST_PURCHASE_PERCENT,
        )
        await self.wait(days=2)
        await self.send("welcome_3")
        await self.wait(days=3)
        await self.send("welcome_4")

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        # One welcome per contact, whatever the subscription's source.
        return "welcome"
