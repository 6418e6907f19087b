"""The journey toolkit: the base every flow builds on, so a flow reads like its story.

    await self.wait(hours=2)     # a durable timer that races the flow's exit goals
    await self.send("cart_1")    # one idempotent activity: render, log, send

Exit goals are declared once per flow (`exit_goals`); whichever of them arrives ends the journey
wherever it is waiting. The `state` query, the `Nudge*` search attributes and the UI's current
details all follow each step, so an operator can see who, which flow, which step and why it stopped.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
)
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.contacts import ContactActivities
    from activities.email import EmailActivities
    from activities.outbound import WebhookActivities
    from nudge import localtime
    from nudge.events.schemas import StoreEventIn
    from nudge.journeys.contracts import (
        ContactProfile,
        ContactProfileInput,
        ContactUpdateInput,
        JourneyEvent,
        JourneyInput,
        JourneyState,
        JourneyStatus,
        SendEmailInput,
        SentEmail,
        WebhookInput,
        WebhookResult,
    )
    from nudge.journeys.reentry import Reentry as Reentry  # flows import it from here
    from nudge.journeys.search_attributes import STATUS, STEP


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
    "in_cart_flow": JourneyStatus.EXITED,
}
# Contact and webhook steps: quick reads and writes, retried for a while, never for days.
STEP_TIMEOUT = timedelta(seconds=30)
STEP_DEADLINE = timedelta(hours=1)
STEP_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1))
#: `quiet_hours = STORE`: the store's window (NUDGE_QUIET_HOURS), handed in with the journey.
STORE = "store"


def choose(seed: str, weights: Mapping[str, float]) -> str:
    """The variant `seed` falls on, each with a share of `weights` (need not add up to 100)."""
    total = sum(weights.values())
    if not weights or total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 with a positive total, got {dict(weights)}")
    point = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2**64 * total
    for name, weight in weights.items():
        point -= weight
        if point < 0 and weight > 0:
            return name
    return [name for name, weight in weights.items() if weight > 0][-1]


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
    #: Store event types only fed to the running journey with the same key (see `wait_for`).
    listens: ClassVar[tuple[str, ...]] = ()
    #: Filters (activities/filters.py) re-checked from the database before every marketing send.
    filters: ClassVar[tuple[str, ...]] = ()
    #: Skip a marketing send if the contact got any marketing email in the last
    #: NUDGE_SMART_SENDING_HOURS, from any flow.
    smart_sending: ClassVar[bool] = True
    #: "21:00-08:00" in the contact's timezone, "" for none, or STORE for NUDGE_QUIET_HOURS.
    quiet_hours: ClassVar[str | None] = STORE
    reentry: ClassVar[Reentry] = Reentry()

    def __init__(self) -> None:
        self._input: JourneyInput | None = None
        self._state: JourneyState | None = None
        self._exit: tuple[JourneyStatus, str] | None = None
        self._restart = False
        self._received: dict[str, JourneyEvent] = {}
        self._steps = 0
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
        if event.type in self.listens:
            self._received[event.type] = event

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
        await self._sleep(delay, f"wait {_human(delay)}")

    async def wait_until(self, at: str, *, days: int = 0, weekday: str | None = None) -> None:
        """Wait until a time of day in the contact's timezone (the store's when unknown):
        `wait_until("10:00", days=1)` is the next day at 10:00, `wait_until("09:00",
        weekday="tuesday")` the next Tuesday at 09:00, `wait_until("10:00")` the next 10:00."""
        target = localtime.next_at(
            self.now(), self.input.timezone, localtime.parse_clock(at), days=days, weekday=weekday
        )
        label = f"wait until {weekday + ' ' if weekday else ''}{at} ({self.input.timezone})"
        await self._sleep(max(target - self.now(), timedelta(0)), label)

    async def wait_for(
        self, event_type: str, *, days: float = 0, hours: float = 0
    ) -> JourneyEvent | None:
        """Wait for an event listed in `listens` (or already received); None after the timeout.
        An exit goal still ends the journey."""
        if event_type not in self.listens:
            raise ValueError(f"{self.flow} waits for {event_type!r}, which is not in `listens`")
        delay = timedelta(days=days, hours=hours)
        self._details(f"waiting for {event_type} (up to {_human(delay)})")
        try:
            await workflow.wait_condition(
                lambda: self._exit is not None or event_type in self._received,
                timeout=delay / self.input.time_scale,
                timeout_summary=f"wait for {event_type}",
            )
        except TimeoutError:
            return None
        if self._exit is not None:
            raise JourneyExit()
        return self._received[event_type]

    def now(self) -> datetime:
        """The journey's clock: workflow time, with flow time sped up by `time_scale` (demos,
        benchmarks) so that local times and windows keep their meaning."""
        state = self._state
        assert state is not None and state.started_at is not None
        real = workflow.now()
        if self.input.time_scale == 1:
            return real
        return state.started_at + (real - state.started_at) * self.input.time_scale

    async def _sleep(self, delay: timedelta, label: str) -> None:
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

    def quiet_hold(self) -> timedelta:
        """How long a marketing send due now must be held for quiet hours (zero outside them)."""
        spec = self.input.quiet_hours if self.quiet_hours == STORE else self.quiet_hours
        return localtime.quiet_hold(
            self.now(), self.input.timezone, localtime.parse_quiet_hours(spec)
        )

    async def _hold_through_quiet_hours(self, step: str) -> None:
        hold = self.quiet_hold()
        if hold > timedelta(0):
            await self._sleep(hold, f"quiet hours: {step} held {_human(hold)}")

    def pick(self, step: str, weights: Mapping[str, float]) -> str:
        """A random split that is stable per contact: the same contact always gets the same
        variant of this flow's step."""
        return choose(f"{self.flow}\x1f{step}\x1f{self.input.contact_id}", weights)

    async def send(
        self,
        step: str,
        *,
        template: str | None = None,
        transactional: bool = False,
        topic: str = "promotions",
        variants: Mapping[str, str] | None = None,
        weights: Mapping[str, float] | None = None,
        filters: Sequence[str] | None = None,
        smart_sending: bool | None = None,
        offer_percent: int | None = None,
    ) -> bool:
        """Send one email; returns whether it went out (False if skipped or failed).

        Marketing sends are held through quiet hours, re-check the flow's filters and smart
        sending; transactional ones (receipts, shipping) skip all three. `variants` (name ->
        template) makes the step an A/B test, each contact getting one variant for good."""
        if self._exit is not None:
            raise JourneyExit()
        if not transactional:
            await self._hold_through_quiet_hours(step)
        variant = None
        if variants:
            variant = self.pick(step, weights or dict.fromkeys(variants, 1.0))
            template = variants[variant]
        self._details(f"sending {step}")
        job = self._send_input(step, template or step, transactional, topic, variant, variants)
        if not transactional:
            job.filters = list(self.filters if filters is None else filters)
            job.smart_sending = self.smart_sending if smart_sending is None else smart_sending
        job.offer_percent = offer_percent
        deadline = max(SEND_DEADLINE / self.input.time_scale, SEND_DEADLINE_FLOOR)
        try:
            result = await workflow.execute_activity_method(
                EmailActivities.send_email,
                job,
                start_to_close_timeout=SEND_ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=deadline,
                retry_policy=SEND_RETRY,
                summary=f"send {step}",
            )
            status, reason, message = result.status, result.reason, result.message_id
        except ActivityError as err:
            status, reason, message = "failed", type(err.cause).__name__, ""
            workflow.logger.warning("send %s failed: %s", step, err.cause)
        self._record_email(
            SentEmail(
                step=step,
                message_id=message,
                status=status,
                reason=reason,
                at=workflow.now(),
                variant=variant,
            )
        )
        if status == "skipped" and reason is not None and reason in TERMINAL_SKIPS:
            self.exit(TERMINAL_SKIPS[reason], reason)
            raise JourneyExit()
        return status == "sent"

    def _send_input(
        self,
        step: str,
        template: str,
        transactional: bool,
        topic: str,
        variant: str | None,
        variants: Mapping[str, str] | None,
    ) -> SendEmailInput:
        """The send activity's input for one step: who, which journey, which template."""
        state, info = self._state, workflow.info()
        assert state is not None
        return SendEmailInput(
            workflow_id=info.workflow_id,
            trigger_event_id=self.input.trigger_event_id,
            flow=self.flow,
            step=step,
            template=template,
            contact_id=self.input.contact_id,
            key=self.input.key,
            journey_started_at=state.started_at or info.start_time,
            transactional=transactional,
            topic=topic,
            variant=variant,
            variants=dict(variants) if variants else None,
            filters=[],
            smart_sending=False,
            time_scale=self.input.time_scale,
            now=workflow.now(),
        )

    def _record_email(self, email: SentEmail) -> None:
        """The step's outcome in the `state` query and the `NudgeStep` search attribute."""
        state = self._state
        assert state is not None
        state.step = email.step
        state.emails.append(email)
        workflow.upsert_search_attributes([STEP.value_set(email.step)])

    # ---- splits and other steps --------------------------------------------------------------

    async def profile(self, properties: Sequence[str] = ()) -> ContactProfile:
        """The contact as the database has it now: segments, tags, orders, last engagement, and
        the `properties` named (only those: the profile is kept in the workflow's history,
        which must hold no personal data)."""
        # A local activity: one quick read, done in the worker without a task round trip (one
        # marker in the history instead of an activity's three events).
        profile: ContactProfile = await workflow.execute_local_activity_method(
            ContactActivities.profile,
            ContactProfileInput(contact_id=self.input.contact_id, properties=list(properties)),
            start_to_close_timeout=STEP_TIMEOUT,
            schedule_to_close_timeout=STEP_DEADLINE,
            retry_policy=STEP_RETRY,
            summary="read contact",
        )
        return profile

    async def in_segment(self, segment_id: str) -> bool:
        """A conditional split on segment membership, as of now."""
        return segment_id in (await self.profile()).segments

    async def update_contact(
        self,
        *,
        properties: Mapping[str, str | int | float | bool | None] | None = None,
        tags: Sequence[str] = (),
        suppress: str | None = None,
        step: str | None = None,
    ) -> None:
        """Merge properties, add tags, or suppress the contact from marketing (`suppress` is
        the reason, e.g. "sunset")."""
        step = step or self._step_name("update_contact")
        self._details(step)
        await workflow.execute_activity_method(
            ContactActivities.update_contact,
            ContactUpdateInput(
                workflow_id=workflow.info().workflow_id,
                step=step,
                contact_id=self.input.contact_id,
                properties=dict(properties or {}),
                tags=list(tags),
                suppress=suppress,
            ),
            start_to_close_timeout=STEP_TIMEOUT,
            schedule_to_close_timeout=STEP_DEADLINE,
            retry_policy=STEP_RETRY,
            summary=step,
        )

    async def webhook(
        self, endpoint: str, payload: Mapping[str, Any] | None = None, *, step: str | None = None
    ) -> int:
        """POST a signed webhook to the named endpoint (NUDGE_WEBHOOKS), e.g. for SMS; returns
        the HTTP status, or 0 if the endpoint refused it for good or stayed down for an hour."""
        step = step or self._step_name(f"webhook_{endpoint}")
        self._details(step)
        try:
            result: WebhookResult = await workflow.execute_activity_method(
                WebhookActivities.call_webhook,
                WebhookInput(
                    workflow_id=workflow.info().workflow_id,
                    step=step,
                    contact_id=self.input.contact_id,
                    flow=self.flow,
                    endpoint=endpoint,
                    payload=dict(payload or {}),
                ),
                start_to_close_timeout=STEP_TIMEOUT,
                schedule_to_close_timeout=STEP_DEADLINE,
                retry_policy=STEP_RETRY,
                summary=step,
            )
        except ActivityError as err:
            workflow.logger.warning("%s failed: %s", step, err.cause)
            return 0
        return result.status_code

    def _step_name(self, kind: str) -> str:
        # Deterministic per position in the story, so a retried activity keeps its identity.
        self._steps += 1
        return f"{kind}_{self._steps}"

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
