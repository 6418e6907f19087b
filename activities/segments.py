"""The scheduled refresh of time-based segments, and the journeys their entries start.

Membership that moves with the clock alone (lapsed 30 days, engaged 30 days, RFM) cannot wait for
an event: `refresh_time_based_segments` recomputes those segments set-based (one transaction),
then starts the flows that the new entries trigger, in batches, heartbeating. Entries are routed
through the same outbox as the API's (`segment_changes.routed_at`), so a retry after a crash
starts what the crashed attempt did not, and nothing twice.
"""

from __future__ import annotations

import logging

from temporalio import activity

from nudge.journeys.contracts import SegmentCounts, SegmentRefreshInput, SegmentRefreshResult
from nudge.journeys.routing import EventRouter
from nudge.segments import membership
from nudge.storage.models import utcnow

log = logging.getLogger(__name__)

ROUTE_BATCH = 200


class SegmentActivities:
    def __init__(self, routing: EventRouter) -> None:
        self.routing = routing

    @activity.defn(name="refresh_time_based_segments")
    async def refresh_time_based_segments(self, job: SegmentRefreshInput) -> SegmentRefreshResult:
        now = job.now or utcnow()
        routing = self.routing
        async with routing.sessions.begin() as session:
            counts = await membership.refresh_time_based(
                session, now, triggers=routing.segment_flows.keys()
            )
        activity.heartbeat("refreshed")
        started = 0
        while journeys := await routing.route_segment_entries(limit=ROUTE_BATCH):
            started += len(journeys)
            activity.heartbeat(f"{started} journeys started")
        log.info("time-based segments refreshed at %s: %s; %d journeys", now, counts, started)
        return SegmentRefreshResult(
            now=now,
            segments={
                sid: SegmentCounts(entered=c.entered, exited=c.exited) for sid, c in counts.items()
            },
            journeys_started=started,
        )
