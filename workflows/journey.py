"""The journey toolkit: the base every flow builds on, so a flow reads like its story.

    await self.wait(hours=2)     # a durable timer that races the flow's exit goals
    await self.send("cart_1")    # one idempotent activity: render, log, send

Exit goals are declared once per flow (`exit_goals`); whichever of them arrives ends the journey
wherever it is waiting. The `state` query, the `Nudge*` search attributes and the UI's current
details all follow each step, so an operator can see who, which flow, which step and why it stopped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import ClassVar

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.email import EmailActivities
    from nudge.events import StoreEventIn
    from nudge.journeys import (
        JourneyEvent,
        JourneyInput,
        JourneyState,
        JourneyStatus,
        SendEmailInput,
        SentEmail,
    )

FLOW = SearchAttributeKey.for_keyword("NudgeFlow")
CONTACT = SearchAttributeKey.for_keyword("NudgeContact")
STEP = SearchAttributeKey.for_keyword("NudgeStep")
STATUS = SearchAttributeKey.for_keyword("NudgeStatus")

# A send is worth nothing once it is this late: better skipped than a reminder days after the fact.
SEND_DEADLINE = timedelta(hours=6)
SEND_DEADLINE_FLOOR = timedelta(minutes=5)
# Well above the SMTP timeout (NUDGE_SMTP_TIMEOUT, 10 s) so an attempt normally ends on its own
# before Temporal gives up on it; one that does not is fenced off by the message log.
SEND_ATTEMPT_TIMEOUT = timedelta(seconds=30)
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
)
# Reasons the send activity gives for skipping a step that mean the journey itself is over.
TERMINAL_SKIPS: Mapping[str, JourneyStatus] = {
    "converted": JourneyStatus.CONVERTED,
    "unsubscribed": JourneyStatus.EXITED,
    "cart_emptied": JourneyStatus.EXITED,
    "suppressed": JourneyStatus.EXITED,
}


class JourneyExit(Exception):
    """Raised inside a flow's story when an exit goal is met; `play` turns it into a status."""


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Journey:
    """Base class of every flow. Subclasses set the class attributes and write `story()`."""

    flow: ClassVar[str]
    #: Store event types that start (or feed) a journey of this flow.
    triggers: ClassVar[tuple[str, ...]] = ()
    #: Store event types that end a journey, with the status they end it in.
    exit_goals: ClassVar[Mapping[str, JourneyStatus]] = {}
    #: Store event types that restart the clock of the current wait.
    restart_on: ClassVar[tuple[str, ...]] = ()
    #: Segment ids whose entry starts a journey of this flow for the contact (keyed by the
    #: segment id; it begins with a `segment_entered` event).
    segment_triggers: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._input: JourneyInput | None = None
        self._state: JourneyState | None = None
        self._exit: tuple[JourneyStatus, str] | None = None
        self._restart = False
        # Clients retry events; a retried event must not restart a clock twice.
        self._seen: deque[str] = deque(maxlen=64)

    # ---- routing, used by the API (outside the sandbox) -------------------------------------

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        """The key that tells this flow's journeys of one contact apart, or None to ignore."""
        return None

    @classmethod
    def should_start(cls, event: StoreEventIn) -> bool:
        """Whether a trigger event may start a new journey (otherwise it only feeds a running one)."""
        return True

    # ---- handlers ----------------------------------------------------------------------------

    @workflow.signal
    def event(self, event: JourneyEvent) -> None:
        if event.id in self._seen:
            return
        self._seen.append(event.id)
        self.on_event(event)

    def on_event(self, event: JourneyEvent) -> None:
        """React to a store event; flows override this for events that need more than a goal."""
        if event.type in self.exit_goals:
            self.exit(self.exit_goals[event.type], event.type)
        elif event.type in self.restart_on:
            self._restart = True

    @workflow.query
    def state(self) -> JourneyState:
        assert self._state is not None, "journey has not started"
        return self._state

    # ---- the vocabulary of a story -----------------------------------------------------------

    @property
    def input(self) -> JourneyInput:
        assert self._input is not None
        return self._input

    def exit(self, status: JourneyStatus, reason: str) -> None:
        if self._exit is None:
            self._exit = (status, reason)

    async def wait(
        self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0
    ) -> None:
        """Wait durably; an exit goal ends the journey, a `restart_on` event restarts the clock."""
        delay = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        label = f"wait {_human(delay)}"
        self._details(label)
        while True:
            self._restart = False
            try:
                await workflow.wait_condition(
                    lambda: self._exit is not None or self._restart,
                    timeout=delay / self.input.time_scale,
                    timeout_summary=label,
                )
            except TimeoutError:
                return
            if self._exit is not None:
                raise JourneyExit()

    async def send(
        self,
        step: str,
        *,
        template: str | None = None,
        transactional: bool = False,
        topic: str = "promotions",
    ) -> bool:
        """Send one email; returns whether it went out (False if skipped or failed)."""
        if self._exit is not None:
            raise JourneyExit()
        state = self._state
        assert state is not None
        info = workflow.info()
        self._details(f"sending {step}")
        deadline = max(SEND_DEADLINE / self.input.time_scale, SEND_DEADLINE_FLOOR)
        try:
            result = await workflow.execute_activity_method(
                EmailActivities.send_email,
                SendEmailInput(
                    workflow_id=info.workflow_id,
                    trigger_event_id=self.input.trigger_event_id,
                    flow=self.flow,
                    step=step,
                    template=template or step,
                    contact_id=self.input.contact_id,
                    key=self.input.key,
                    journey_started_at=state.started_at or info.start_time,
                    transactional=transactional,
                    topic=topic,
                ),
                start_to_close_timeout=SEND_ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=deadline,
                retry_policy=SEND_RETRY,
                summary=f"send {step}",
            )
            status, reason, message = result.status, result.reason, result.message_id
        except ActivityError as err:
            status, reason, message = "failed", type(err.cause).__name__, ""
            workflow.logger.warning("send %s failed: %s", step, err.cause)
        state.step = step
        state.emails.append(
            SentEmail(
                step=step, message_id=message, status=status, reason=reason, at=workflow.now()
            )
        )
        workflow.upsert_search_attributes([STEP.value_set(step)])
        if status == "skipped" and reason is not None and reason in TERMINAL_SKIPS:
            self.exit(TERMINAL_SKIPS[reason], reason)
            raise JourneyExit()
        return status == "sent"

    # ---- running a story ---------------------------------------------------------------------

    async def play(
        self, journey: JourneyInput, story: Callable[[], Awaitable[None]]
    ) -> JourneyState:
        """Run `story` as this journey: the one call a flow's `@workflow.run` method makes."""
        self._input = journey
        self._state = JourneyState(
            flow=self.flow,
            contact_id=journey.contact_id,
            key=journey.key,
            started_at=workflow.info().start_time,
        )
        self._details("started")
        try:
            await story()
        except JourneyExit:
            pass
        if self._exit is not None:
            self._state.status, self._state.exit_reason = self._exit
        else:
            self._state.status = JourneyStatus.COMPLETED
        workflow.upsert_search_attributes([STATUS.value_set(self._state.status.value)])
        self._details(
            f"{self._state.status.value}"
            + (f": {self._state.exit_reason}" if self._state.exit_reason else "")
        )
        return self._state

    def _details(self, doing: str) -> None:
        state = self._state
        assert state is not None
        sent = ", ".join(f"{e.step} {e.status}" for e in state.emails) or "none yet"
        workflow.set_current_details(
            f"**{self.flow}** for contact `{state.contact_id}` ({state.key})\n\n"
            f"Now: {doing}\n\nEmails: {sent}"
        )


def start_search_attributes(flow: str, contact_id: int) -> TypedSearchAttributes:
    """The attributes a journey is started with, so it is findable before its first step."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(FLOW, flow),
            SearchAttributePair(CONTACT, str(contact_id)),
            SearchAttributePair(STEP, "started"),
            SearchAttributePair(STATUS, JourneyStatus.RUNNING.value),
        ]
    )
