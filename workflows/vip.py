"""VIP and loyalty: thank the best customers, and turn a first order into a second.

Two segment entries start it, each its own journey (the key is the segment id):

Entering `vip` (3+ orders, or lifetime spend over the threshold; nudge/segments/catalogue.py):
1. At once: a thank-you with an exclusive perk, a VIP code (the `vip` segment's percentage).
   An A/B test of the subject: `vip_1` (a) says thank you, `vip_1_b` (b) says "one of our best".
                                                                                    -> `vip_1`
2. 3 days later: early access to the new collection.                                -> `vip_2`
3. 7 days later: their points balance, their tier and what the next tier takes.     -> `vip_3`
A VIP who orders again is what this journey is for: orders do not end it.

Entering `one_time_buyers` (exactly one order) gets a "second purchase" nudge instead:
1. 7 days after the first order: products that go with it and a code for the second order.
                                                                         -> `second_purchase_1`
   Unless that one order was big enough to make them a VIP (then `completed`, "vip": the VIP
   journey thanks them instead).
A second order ends it as `converted`, by its event or, if that never arrived, by the send's
`one_order` filter (the database still counts one order).

Unsubscribing ends either as `exited`. Re-entry: once per segment, ever.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.journeys.contracts import JourneyEvent, JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry

VIP = "vip"
ONE_TIME_BUYERS = "one_time_buyers"


@workflow.defn(name="vip")
class Vip(Journey):
    flow = "vip"
    segment_triggers = (VIP, ONE_TIME_BUYERS)
    exit_goals = {
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }
    reentry = Reentry.per_key()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        if self.input.key == ONE_TIME_BUYERS:
            await self.wait(days=7)
            if await self.in_segment(VIP):
                # One order big enough to make them a VIP: the VIP journey thanks them instead.
                self.exit(JourneyStatus.COMPLETED, "vip")
                return
            await self.send("second_purchase_1", filters=("one_order",))
            return
        await self.send(
            "vip_1", variants={"a": "vip_1", "b": "vip_1_b"}, weights={"a": 50, "b": 50}
        )
        await self.wait(days=3)
        await self.send("vip_2")
        await self.wait(days=7)
        await self.send("vip_3")

    # The segment this journey is about, from its start signal: signals can be handled before
    # `run` has the input (an order signalled right after the start, in the same activation).
    _segment: str | None = None

    def on_event(self, event: JourneyEvent) -> None:
        if event.type == "segment_entered":
            self._segment = event.segment_id
        elif event.type == "order_placed" and self._segment == VIP:
            return  # a VIP ordering again is not the end of their thank-you
        super().on_event(event)
