"""The routing service: from store event to journeys. Store it once, fold it into the store's
data, route it. The one place that starts and signals journeys: the API's events, the link pages
(unsubscribe, confirm), provider feedback, the catalogue and the scheduled segment refresh all go
through an `EventRouter`, built once by the API (`api.deps.RouterDep`) and once by the worker.

Routing is generic over the flows it is given (`workflows.FLOWS` in the API and the worker): a flow's trigger events start (or feed) a
journey by signal-with-start under a deterministic workflow id, and its exit-goal events signal
the contact's open journeys of that flow. An event is marked routed only after Temporal accepted
it, so a client retrying after a crash gets its event routed rather than silently dropped.

Each new event also recomputes the contact's segment memberships, in the event's transaction
(`nudge.segments.membership.refresh_contact`). Entering a segment that a flow lists in
`segment_triggers` starts that flow's journey for the contact, keyed by the segment id; the entry
stays unrouted in `segment_changes` until Temporal has the journey, so a crash in between only
delays it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from nudge.commerce import catalog
from nudge.contacts import directory
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys import records
from nudge.journeys.contracts import JourneyEvent, JourneyInput, JourneyStatus, workflow_id
from nudge.journeys.reentry import Reentry
from nudge.journeys.search_attributes import start_search_attributes
from nudge.mail import confirmation
from nudge.segments import membership
from nudge.settings import Settings
from nudge.storage.installation import load_installation_id
from nudge.storage.models import utcnow

log = logging.getLogger(__name__)

#: Derived catalogue events routed per transaction.
CATALOG_CHUNK = 100


class EventResult(BaseModel):
    id: str
    status: Literal["accepted", "duplicate"]
    journeys: list[str] = []


@dataclass
class CatalogRouting:
    """What routing a catalogue change did: events routed by type, journeys touched."""

    counts: dict[str, int]
    journeys: list[str] = field(default_factory=list)


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    results: list[EventResult]


def history_event_id(event: ev.StoreEventIn) -> str:
    """The id a journey knows an event by (its input's `trigger_event_id`, a signal's `id`): a
    store's event id is free text, which may hold personal data and lands in the workflow's
    history, so a journey gets its SHA-256 instead (`evt-` and 40 hex digits), the same for the
    same id. Nudge's own events keep theirs (made of ids and digests already): the price-drop
    email looks its `price_dropped` event up by it. The database (`journeys`, `events`) keeps
    the store's ids. Journeys started before this keep the id they started with, so their
    Message-IDs and message log keys do not change."""
    if event.type in catalog.DERIVED_TYPES:
        return event.id
    return f"evt-{hashlib.sha256(event.id.encode()).hexdigest()[:40]}"


def journey_event(event: ev.StoreEventIn) -> JourneyEvent:
    cart = ev.cart_of(event)
    order = event.order if isinstance(event, ev.OrderPlaced) else None
    order_id = (
        event.order.id
        if isinstance(event, ev.OrderPlaced | ev.OrderShipped | ev.OrderRefunded)
        else None
    )
    product = getattr(event, "product", None)
    return JourneyEvent(
        id=history_event_id(event),
        type=event.type,
        occurred_at=event.occurred_at,
        cart_token=cart.token if cart else order.cart_token if order else None,
        order_id=order_id,
        line_count=len(cart.lines) if cart else None,
        product_id=product.id if isinstance(product, ev.ProductIn) else None,
    )


class Flow(Protocol):
    """What routing reads of a flow: the class attributes and routing hooks of
    `workflows.journey.Journey`, which every flow extends."""

    flow: ClassVar[str]
    triggers: ClassVar[tuple[str, ...]]
    listens: ClassVar[tuple[str, ...]]
    segment_triggers: ClassVar[tuple[str, ...]]
    exit_goals: ClassVar[Mapping[str, JourneyStatus]]
    reentry: ClassVar[Reentry]

    @classmethod
    def journey_key(cls, event: ev.StoreEventIn) -> str | None: ...

    @classmethod
    def should_start(cls, event: ev.StoreEventIn) -> bool: ...


class EventRouter:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: Client,
        settings: Settings,
        flows: Sequence[type[Flow]],
    ) -> None:
        self.sessions, self.client, self.settings = sessions, client, settings
        self.flows = tuple(flows)
        #: This installation's id (part of every new workflow id), read on first use.
        self._installation: str | None = None
        #: Whether journeys started before installation ids may still be open (read once).
        self._legacy: bool | None = None
        #: Segment ids whose entries start journeys, and the flows each one starts.
        self.segment_flows: dict[str, list[type[Flow]]] = {}
        for flow in self.flows:
            for segment_id in flow.segment_triggers:
                self.segment_flows.setdefault(segment_id, []).append(flow)

    async def ingest(self, batch: list[tuple[ev.StoreEventIn, dict[str, Any]]]) -> IngestResult:
        results = [await self.ingest_one(event, raw) for event, raw in batch]
        accepted = sum(r.status == "accepted" for r in results)
        return IngestResult(accepted=accepted, duplicates=len(results) - accepted, results=results)

    async def ingest_one(self, event: ev.StoreEventIn, raw: dict[str, Any]) -> EventResult:
        # Two transactions per event: one to store it (and read what it left to route), one to
        # record what Temporal accepted. SQLite has one writer, so each one saved is throughput.
        async with self.sessions.begin() as session:
            known = await event_log.event_status(session, event.id)
            if known is not None and known.routed_at is not None:
                return EventResult(id=event.id, status="duplicate")
            current = True
            if known is None:
                contact_id = await directory.upsert_contact(session, event.contact)
                if not await event_log.record_event(session, event, contact_id, raw):
                    return EventResult(id=event.id, status="duplicate")  # lost a race to a twin
                current = await projection.apply_event(
                    session, event, contact_id, settings=self.settings
                )
                await membership.refresh_contact(
                    session, contact_id, utcnow(), triggers=self.segment_flows.keys()
                )
            else:
                contact_id = known.contact_id
            # Also on a retry: the entries a crash left unrouted.
            entries = await membership.pending_entries(
                session, self.segment_flows.keys(), contact_id=contact_id
            )
            # Events Nudge derived from this one (a loyalty tier change), stored with it so a
            # crash before they are routed delays them but cannot lose them.
            follow_ups = await event_log.follow_ups(session, event.id)
        if isinstance(event, ev.CustomerSubscribed) and self.settings.double_opt_in:
            # Double opt-in: the subscription reaches flows only once confirmed (api/routers/
            # preferences.py ingests it again then); until then, the confirmation email.
            if await confirmation.send_confirmation_if_pending(
                self.sessions, self.settings, contact_id, event.id
            ):
                current = False
        started: list[dict[str, Any]] = []
        # A stale snapshot (older than what is stored) is kept as history but moves no journey.
        journeys = await self.route(event, contact_id, started) if current else []
        journeys += await self._start_entries(entries, started)
        for follow_up in follow_ups:
            journeys += await self.route(follow_up, contact_id, started)
        # Marked routed only now that Temporal has every journey: a crash before this commit
        # makes the client's retry route the event again (starts and signals are idempotent).
        async with self.sessions.begin() as session:
            await self._record(session, started)
            await membership.mark_routed(session, [e.change_id for e in entries], utcnow())
            for follow_up in follow_ups:
                await event_log.mark_routed(session, follow_up.id)
            await event_log.mark_routed(session, event.id)
        return EventResult(id=event.id, status="accepted", journeys=journeys)

    async def route(
        self, event: ev.StoreEventIn, contact_id: int, started: list[dict[str, Any]]
    ) -> list[str]:
        """Start or signal the journeys `event` concerns; the journeys started are appended to
        `started`, for the caller to record in its transaction."""
        signal = journey_event(event)
        touched: list[str] = []
        for flow in self.flows:
            if event.type in flow.triggers or event.type in flow.listens:
                key = flow.journey_key(event)
                if key is None:
                    continue
                wid = workflow_id(flow.flow, contact_id, key, await self.installation())
                legacy = await self._feed_legacy(flow.flow, contact_id, key, signal)
                if legacy is not None:
                    touched.append(legacy)  # started before installation ids: keeps its id
                elif event.type in flow.triggers and flow.should_start(event):
                    fed, record = await self._start(
                        flow, wid, contact_id, key, event.id, signal, event.occurred_at
                    )
                    started += [record] if record else []
                    touched += [wid] if fed else []
                elif await self._signal(wid, None, signal):
                    touched.append(wid)
            elif event.type in flow.exit_goals:
                async with self.sessions() as session:
                    open_ = await records.open_journeys(session, contact_id, [flow.flow])
                for journey in open_:
                    if await self._signal(journey.workflow_id, journey.run_id, signal):
                        touched.append(journey.workflow_id)
                    else:
                        async with self.sessions.begin() as session:
                            await records.close_journey(session, journey.id)
        return touched

    async def route_segment_entries(
        self, contact_id: int | None = None, *, limit: int = 500
    ) -> list[str]:
        """Start the journeys that unrouted segment entries trigger (one contact's, or the oldest
        `limit` of anyone's), then mark the entries routed. Returns the workflow ids."""
        async with self.sessions() as session:
            entries = await membership.pending_entries(
                session, self.segment_flows.keys(), contact_id=contact_id, limit=limit
            )
        if not entries:
            return []
        started: list[dict[str, Any]] = []
        journeys = await self._start_entries(entries, started)
        async with self.sessions.begin() as session:
            await self._record(session, started)
            await membership.mark_routed(session, [e.change_id for e in entries], utcnow())
        return journeys

    async def route_catalog_changes(self, product_ids: Sequence[str]) -> CatalogRouting:
        """Route the events a catalogue change raised about these products (`back_in_stock`,
        `price_dropped`), `CATALOG_CHUNK` at a time, each chunk marked routed only once
        Temporal has every journey of it: a crash in between leaves them for the retry (starts
        and signals are idempotent)."""
        routed = CatalogRouting(counts=dict.fromkeys(catalog.DERIVED_TYPES, 0))
        while True:
            async with self.sessions() as session:
                batch = await catalog.pending(session, product_ids, limit=CATALOG_CHUNK)
            if not batch:
                return routed
            started: list[dict[str, Any]] = []
            for contact_id, event in batch:
                routed.journeys += await self.route(event, contact_id, started)
                routed.counts[event.type] += 1
            async with self.sessions.begin() as session:
                await self._record(session, started)
                for _, event in batch:
                    await event_log.mark_routed(session, event.id)

    async def _start_entries(
        self, entries: Sequence[membership.MembershipChange], started: list[dict[str, Any]]
    ) -> list[str]:
        journeys: list[str] = []
        for entry in entries:
            trigger = f"segment:{entry.segment_id}:{entry.change_id}"
            signal = JourneyEvent(
                id=trigger,
                type="segment_entered",
                occurred_at=entry.at,
                segment_id=entry.segment_id,
            )
            for flow in self.segment_flows[entry.segment_id]:
                wid = workflow_id(
                    flow.flow, entry.contact_id, entry.segment_id, await self.installation()
                )
                legacy = await self._feed_legacy(
                    flow.flow, entry.contact_id, entry.segment_id, signal
                )
                if legacy is not None:
                    journeys.append(legacy)
                    continue
                fed, record = await self._start(
                    flow, wid, entry.contact_id, entry.segment_id, trigger, signal, entry.at
                )
                started += [record] if record else []
                journeys += [wid] if fed else []
        return journeys

    async def _start(
        self,
        flow: type[Flow],
        wid: str,
        contact_id: int,
        key: str,
        event_id: str,
        signal: JourneyEvent,
        at: datetime,
    ) -> tuple[bool, dict[str, Any] | None]:
        """Signal-with-start one journey. Returns whether a journey got the event, and the
        `record_journey` values of the one started: none when the flow's re-entry rule refuses
        a new journey (a running one with the same id is still fed the event)."""
        async with self.sessions() as session:
            timezone = await directory.contact_timezone(session, contact_id)
            previous = (
                await records.previous_journeys(session, flow.flow, contact_id)
                if flow.reentry.rule != "always"
                else []
            )
        # Ids from before installation ids compare as the same journey's under today's format.
        installation = await self.installation()
        previous = [(self._current_format(w, installation), then) for w, then in previous]
        if previous and not flow.reentry.allows(wid, at, previous):
            log.info("re-entry into %s refused for contact %s (%s)", flow.flow, contact_id, key)
            return any(w == wid for w, _ in previous) and await self._signal(
                wid, None, signal
            ), None
        # Flows are registered under their `flow` name (checked by the tests).
        handle = await self.client.start_workflow(
            flow.flow,
            JourneyInput(
                flow=flow.flow,
                contact_id=contact_id,
                key=key,
                trigger_event_id=signal.id,  # never the store's id (`history_event_id`)
                time_scale=self.settings.time_scale,
                timezone=timezone or self.settings.store_timezone,
                quiet_hours=self.settings.quiet_hours,
            ),
            id=wid,
            task_queue=self.settings.task_queue,
            start_signal="event",
            start_signal_args=[signal],
            search_attributes=start_search_attributes(flow.flow, contact_id, installation),
            static_summary=f"{flow.flow} · contact {contact_id} · {key}",
        )
        return True, {
            "workflow_id": wid,
            "run_id": handle.result_run_id or "",
            "flow": flow.flow,
            "contact_id": contact_id,
            "event_id": event_id,
        }

    async def installation(self) -> str:
        """This installation's id (nudge.storage.installation), read once."""
        if self._installation is None:
            self._installation = await load_installation_id(self.sessions)
        return self._installation

    @staticmethod
    def _current_format(wid: str, installation: str) -> str:
        return wid if wid.startswith(f"{installation}-") else f"{installation}-{wid}"

    async def _feed_legacy(
        self, flow: str, contact_id: int, key: str, signal: JourneyEvent
    ) -> str | None:
        """Signal this journey if it was started before installation ids and still runs (such
        journeys keep their ids, and their Message-IDs with them); its id if it got the event.
        No query at all in a database that had no such journey open when first asked."""
        installation = await self.installation()
        if self._legacy is None:
            async with self.sessions() as session:
                self._legacy = await records.any_open_without_prefix(session, f"{installation}-")
        if not self._legacy:
            return None
        legacy = workflow_id(flow, contact_id, key)
        async with self.sessions() as session:
            found = await records.open_journey(session, legacy)
        if found is None:
            return None
        # The latest run (a journey may have continued as new since its row was written).
        if await self._signal(legacy, None, signal):
            return legacy
        async with self.sessions.begin() as session:
            await records.close_journey(session, found.id)
        return None

    @staticmethod
    async def _record(session: AsyncSession, started: Sequence[dict[str, Any]]) -> None:
        for values in started:
            await records.record_journey(session, **values)

    async def _signal(self, wid: str, run_id: str | None, signal: JourneyEvent) -> bool:
        """Signal a journey; False if it is no longer running."""
        try:
            await self.client.get_workflow_handle(wid, run_id=run_id).signal("event", signal)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True
