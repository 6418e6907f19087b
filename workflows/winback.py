"""Win-back: three emails with growing incentives for a customer who stopped buying.

Starts when the contact enters `lapsed_30`: their last order is more than 30 days old (the hourly
segment refresh notices it; no event is needed).

1. At once: "we miss you" - what is new since their last order and 10 % off, a unique code.
   An A/B test of the subject line: `winback_1` (a) asks, `winback_1_b` (b) leads with the offer.
                                                                            -> `winback_1`
2. 30 days later, still no order: 15 % off and what other customers are buying.   -> `winback_2`
3. 30 days later again: 20 % off, the last and biggest offer.                     -> `winback_3`

Any `order_placed` ends it at once as `converted`, and every send re-checks the database
(`no_order_since_start`), so an order whose event never reached the journey stops it too.
Unsubscribing ends it as `exited`.

Re-entry: once per lapse. A contact who buys leaves `lapsed_30` and can only enter it again 30
days after that order, so two honest lapses always start more than 30 days apart; what
`Reentry.every(days=30)` refuses is a flap, such as a refund that puts an old last order back
the day after a win-back order, which must not hand out the 10 % code a second time.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry

# The incentive of each rung of the ladder, in percent.
OFFERS = {"winback_1": 10, "winback_2": 15, "winback_3": 20}


@workflow.defn(name="winback")
class Winback(Journey):
    flow = "winback"
    segment_triggers = ("lapsed_30",)
    exit_goals = {
        "order_placed": JourneyStatus.CONVERTED,
        "customer_unsubscribed": JourneyStatus.EXITED,
    }
    filters = ("no_order_since_start",)
    reentry = Reentry.every(days=30)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.send(
            "winback_1",
            offer_percent=OFFERS["winback_1"],
            variants={"a": "winback_1", "b": "winback_1_b"},
            weights={"a": 50, "b": 50},
        )
        await self.wait(days=30)
        await self.send("winback_2", offer_percent=OFFERS["winback_2"])
        await self.wait(days=30)
        await self.send("winback_3", offer_percent=OFFERS["winback_3"])
