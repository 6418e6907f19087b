"""Segment refresh: the hourly run that moves contacts in and out of time-based segments.

Started by the Temporal Schedule `nudge-segment-refresh` (created or updated by `worker.py` at
start). One activity does the work; the workflow gives it the time of the run, so a retried
attempt evaluates the segments as of the same moment.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.segments import SegmentActivities
    from nudge.journeys.contracts import SegmentRefreshInput, SegmentRefreshResult

SCHEDULE_ID = "nudge-segment-refresh"
REFRESH_EVERY = timedelta(hours=1)
# A full refresh of a large store takes minutes; the heartbeat tells a stuck attempt from a long one.
REFRESH_TIMEOUT = timedelta(minutes=50)
REFRESH_HEARTBEAT = timedelta(minutes=2)


@workflow.defn(name="segment_refresh")
class SegmentRefresh:
    @workflow.run
    async def run(self, job: SegmentRefreshInput) -> SegmentRefreshResult:
        now = job.now or workflow.now()
        return await workflow.execute_activity_method(
            SegmentActivities.refresh_time_based_segments,
            SegmentRefreshInput(now=now),
            start_to_close_timeout=REFRESH_TIMEOUT,
            heartbeat_timeout=REFRESH_HEARTBEAT,
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5)),
            summary="refresh time-based segments",
        )
