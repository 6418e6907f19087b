"""Cart abandonment: three emails that bring an abandoned cart back.

1. About 2 hours after the cart was last touched: "your order didn't go through" - the item
   with its picture and a button to complete the order; a returning customer gets a
   "welcome back" version.                                            -> `cart_1` / `cart_1_returning`
2. The next day: the item again, why it is worth having, an offer to answer questions; an A/B
   test of two subject lines.                                         -> `cart_2` (a) / `cart_2_b` (b)
3. 24 hours later: an incentive - a unique discount code with a deadline - and alternatives.
                                                                      -> `cart_3`

A new `cart_updated` (or `checkout_started`) for the same cart restarts the clock of the current
wait instead of starting a second journey; emptying the cart ends it, and a cart gets one journey
(re-entry per cart). An `order_placed` for the contact ends it at once as `converted`, and every
send re-checks the database (filters), so no email goes out after an order even if the signal
was lost.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.events.schemas import StoreEventIn, cart_of
    from nudge.journeys.contracts import JourneyEvent, JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry


@workflow.defn(name="cart_abandonment")
class CartAbandonment(Journey):
    flow = "cart_abandonment"
    triggers = ("cart_updated", "checkout_started")
    restart_on = ("cart_updated", "checkout_started")
    exit_goals = {
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }
    filters = ("no_order_since_start", "cart_open")
    reentry = Reentry.per_key()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=2)
        # Journeys started before the split send `cart_1` to everyone (versioning).
        if workflow.patched("returning-customer-split") and (await self.profile()).orders:
            await self.send("cart_1", template="cart_1_returning")
        else:
            await self.send("cart_1")
        await self.wait(days=1)
        await self.send("cart_2", variants={"a": "cart_2", "b": "cart_2_b"})
        await self.wait(hours=24)
        await self.send("cart_3")

    def on_event(self, event: JourneyEvent) -> None:
        if event.type in self.triggers and event.line_count == 0:
            self.exit(JourneyStatus.EXITED, "cart_emptied")
        else:
            super().on_event(event)

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        cart = cart_of(event)
        return cart.token if cart else None

    @classmethod
    def should_start(cls, event: StoreEventIn) -> bool:
        cart = cart_of(event)
        return bool(cart and cart.lines)
