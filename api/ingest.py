"""From store event to journeys: store it once, fold it into the store's data, route it.

Routing is generic over the flows in `workflows.FLOWS`: a flow's trigger events start (or feed) a
journey by signal-with-start under a deterministic workflow id, and its exit-goal events signal
the contact's open journeys of that flow. An event is marked routed only after Temporal accepted
it, so a client retrying after a crash gets its event routed rather than silently dropped.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from nudge import events as ev
from nudge import queries
from nudge.journeys import JourneyEvent, JourneyInput, workflow_id
from nudge.settings import Settings
from workflows import FLOWS
from workflows.journey import start_search_attributes

log = logging.getLogger(__name__)


class EventResult(BaseModel):
    id: str
    status: Literal["accepted", "duplicate"]
    journeys: list[str] = []


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    results: list[EventResult]


def journey_event(event: ev.StoreEventIn) -> JourneyEvent:
    cart = ev.cart_of(event)
    order = event.order if isinstance(event, ev.OrderPlaced) else None
    return JourneyEvent(
        id=event.id,
        type=event.type,
        occurred_at=event.occurred_at,
        cart_token=cart.token if cart else order.cart_token if order else None,
        order_id=order.id if order else None,
        line_count=len(cart.lines) if cart else None,
    )


class Ingestor:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], client: Client, settings: Settings
    ) -> None:
        self.sessions, self.client, self.settings = sessions, client, settings

    async def ingest(self, batch: list[tuple[ev.StoreEventIn, dict[str, Any]]]) -> IngestResult:
        results = [await self.ingest_one(event, raw) for event, raw in batch]
        accepted = sum(r.status == "accepted" for r in results)
        return IngestResult(accepted=accepted, duplicates=len(results) - accepted, results=results)

    async def ingest_one(self, event: ev.StoreEventIn, raw: dict[str, Any]) -> EventResult:
        async with self.sessions.begin() as session:
            known = await queries.event_status(session, event.id)
            if known is not None and known.routed_at is not None:
                return EventResult(id=event.id, status="duplicate")
            current = True
            if known is None:
                contact_id = await queries.upsert_contact(session, event.contact)
                if not await queries.record_event(session, event, contact_id, raw):
                    return EventResult(id=event.id, status="duplicate")  # lost a race to a twin
                current = await queries.apply_event(session, event, contact_id)
            else:
                contact_id = known.contact_id
        # A stale snapshot (older than what is stored) is kept as history but moves no journey.
        journeys = await self.route(event, contact_id) if current else []
        async with self.sessions.begin() as session:
            await queries.mark_routed(session, event.id)
        return EventResult(id=event.id, status="accepted", journeys=journeys)

    async def route(self, event: ev.StoreEventIn, contact_id: int) -> list[str]:
        signal = journey_event(event)
        touched: list[str] = []
        for flow in FLOWS:
            if event.type in flow.triggers:
                key = flow.journey_key(event)
                if key is None:
                    continue
                wid = workflow_id(flow.flow, contact_id, key)
                if flow.should_start(event):
                    await self._start(flow.flow, wid, contact_id, key, event.id, signal)
                    touched.append(wid)
                elif await self._signal(wid, None, signal):
                    touched.append(wid)
            elif event.type in flow.exit_goals:
                async with self.sessions() as session:
                    open_ = await queries.open_journeys(session, contact_id, [flow.flow])
                for journey in open_:
                    if await self._signal(journey.workflow_id, journey.run_id, signal):
                        touched.append(journey.workflow_id)
                    else:
                        async with self.sessions.begin() as session:
                            await queries.close_journey(session, journey.id)
        return touched

    async def _start(
        self,
        flow: str,
        wid: str,
        contact_id: int,
        key: str,
        event_id: str,
        signal: JourneyEvent,
    ) -> None:
        # Flows are registered under their `flow` name (checked by the tests).
        handle = await self.client.start_workflow(
            flow,
            JourneyInput(
                flow=flow,
                contact_id=contact_id,
                key=key,
                trigger_event_id=event_id,
                time_scale=self.settings.time_scale,
            ),
            id=wid,
            task_queue=self.settings.task_queue,
            start_signal="event",
            start_signal_args=[signal],
            search_attributes=start_search_attributes(flow, contact_id),
            static_summary=f"{flow} · contact {contact_id} · {key}",
        )
        async with self.sessions.begin() as session:
            await queries.record_journey(
                session,
                workflow_id=wid,
                run_id=handle.result_run_id or "",
                flow=flow,
                contact_id=contact_id,
                event_id=event_id,
            )

    async def _signal(self, wid: str, run_id: str | None, signal: JourneyEvent) -> bool:
        """Signal a journey; False if it is no longer running."""
        try:
            await self.client.get_workflow_handle(wid, run_id=run_id).signal("event", signal)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True
