"""Sunset: ask the long-silent whether they still want our emails, and stop if they do not.

Starts when the contact enters `unengaged_180`: known for 180+ days, mailed in the last 180 days,
and no open or click by a person in all that time.

1. At once: a re-permission email, "do you still want to hear from us?", with one button
   whose (tracked) click is the engagement that keeps them. Smart sending is off for it: a
   recent email from another flow must not silently skip the one that decides.
   An A/B test of the subject: `sunset_1` (a) asks, `sunset_1_b` (b) "should we stay in touch".
                                                                                 -> `sunset_1`
2. 14 days later, the contact's profile: an open or a click since the journey started keeps
   them (`completed`, "kept"); none, and the contact is suppressed from marketing with reason
   `sunset` (`exited`, "sunset"), which keeps the list clean and the sending reputation high.
   Order confirmations and shipping updates still reach them.

Unsubscribing ends it as `exited`; a re-permission email that could not go out (a topic turned
off) ends it as `exited`, "not_asked", suppressing nobody. Re-entry: once, ever: a contact kept
once is not asked a second time by this flow.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus

from workflows.journey import Journey, Reentry

# How long a contact has to show they still want our emails.
GRACE_DAYS = 14


@workflow.defn(name="sunset")
class Sunset(Journey):
    flow = "sunset"
    segment_triggers = ("unengaged_180",)
    exit_goals = {"customer_unsubscribed": JourneyStatus.EXITED}
    smart_sending = False
    reentry = Reentry.once()

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        asked = await self.send(
            "sunset_1", variants={"a": "sunset_1", "b": "sunset_1_b"}, weights={"a": 50, "b": 50}
        )
        if not asked:
            # Skipped (a topic turned off) or failed: nobody is suppressed without being asked.
            self.exit(JourneyStatus.EXITED, "not_asked")
            return
        await self.wait(days=GRACE_DAYS)
        profile = await self.profile()
        engaged = profile.last_engaged_at
        if engaged is not None and engaged >= workflow.info().start_time:
            self.exit(JourneyStatus.COMPLETED, "kept")
            return
        await self.update_contact(suppress="sunset")
        self.exit(JourneyStatus.EXITED, "sunset")
