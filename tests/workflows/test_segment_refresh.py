"""The scheduled segment refresh: the workflow and its activity on the time-skipping server (a
contact lapses with no event and the flow its entry triggers starts), and the Temporal Schedule
on the dev server, which the time-skipping test server does not implement."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import workflow
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.email import EmailActivities
from activities.segments import SegmentActivities
from conftest import _end_running_journeys, make_settings
from nudge.contacts import directory
from nudge.dev.mailcatcher import MailCatcher
from nudge.dev.temporal_dev import extra_args, temporal_binary
from nudge.events import schemas as ev
from nudge.journeys.contracts import (
    JourneyInput,
    JourneyState,
    JourneyStatus,
    SegmentCounts,
    SegmentRefreshInput,
    SegmentRefreshResult,
    workflow_id,
)
from nudge.journeys.routing import EventRouter
from nudge.mail.smtp import SmtpSender
from nudge.segments import catalogue, membership
from nudge.segments.definition import parse
from nudge.settings import Settings
from nudge.storage.db import create_engine, session_maker
from nudge.storage.installation import load_installation_id
from nudge.storage.models import Order, utcnow
from worker import build_worker, ensure_segment_schedule
from workflows.journey import Journey
from workflows.segment_refresh import REFRESH_EVERY, SCHEDULE_ID, SegmentRefresh

SEGMENT = "test_lapsed_tagged"
TAG = "test-lapsed"


@workflow.defn(name="test_win_back", sandboxed=False)
class WinBack(Journey):
    """Test-only: a journey for every tagged contact who lapses."""

    flow = "test_win_back"
    segment_triggers = (SEGMENT,)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(minutes=1)


#: Typed as the toolkit base: routing reads only what every `Journey` declares.
FLOWS_UNDER_TEST: list[type[Journey]] = [WinBack]

Sessions = async_sessionmaker[AsyncSession]


async def lapsing_contact(sessions: Sessions, days_since_order: int) -> int:
    async with sessions.begin() as session:
        if await catalogue.get_segment(session, SEGMENT) is None:
            definition = {
                "all": [
                    {"kind": "last_order", "older_than_days": 30},
                    {"kind": "tag", "tag": TAG},
                ]
            }
            await catalogue.create_segment(
                session, SEGMENT, "Tagged lapsed", parse(definition), utcnow()
            )
        contact_id = await directory.upsert_contact(
            session,
            ev.ContactIn(email=f"lapse.{uuid.uuid4().hex[:10]}@example.com", tags=[TAG]),
        )
        session.add(
            Order(
                id=f"o_{uuid.uuid4().hex[:12]}",
                contact_id=contact_id,
                currency="EUR",
                total=Decimal("20.00"),
                placed_at=utcnow() - timedelta(days=days_since_order),
            )
        )
    async with sessions.begin() as session:
        await membership.refresh_contact(session, contact_id, utcnow())
    return contact_id


async def test_a_contact_lapses_without_an_event_and_its_flow_starts(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> None:
    settings = make_settings(db_url, mailcatcher)
    engine = create_engine(settings.database_url)
    sessions = session_maker(engine)
    email = EmailActivities(sessions, SmtpSender(settings.smtp_host, settings.smtp_port), settings)
    refresh = SegmentActivities(EventRouter(sessions, temporal, settings, FLOWS_UNDER_TEST))
    since = utcnow()
    try:
        async with build_worker(temporal, settings, email, flows=[WinBack], segments=refresh):
            contact_id = await lapsing_contact(sessions, days_since_order=29)
            async with sessions() as session:
                assert SEGMENT not in {
                    s for s, _, _ in await catalogue.segments_of(session, contact_id)
                }

            later = utcnow() + timedelta(days=2)
            result = await temporal.execute_workflow(
                SegmentRefresh.run,
                SegmentRefreshInput(now=later),
                id=f"segment-refresh-{uuid.uuid4().hex[:8]}",
                task_queue=settings.task_queue,
            )
            assert result.now == later
            assert result.segments[SEGMENT] == SegmentCounts(entered=1, exited=0)
            assert result.journeys_started == 1
            async with sessions() as session:
                assert SEGMENT in {
                    s for s, _, _ in await catalogue.segments_of(session, contact_id)
                }
                assert await membership.pending_entries(session, {SEGMENT}) == []

            installation = await load_installation_id(sessions)
            handle = temporal.get_workflow_handle(
                workflow_id("test_win_back", contact_id, SEGMENT, installation),
                result_type=JourneyState,
            )
            async with time_env.time_skipping_unlocked():  # type: ignore[attr-defined]
                state = await handle.result()
            assert (state.key, state.status) == (SEGMENT, JourneyStatus.COMPLETED)

            # The next run finds nothing new to do.
            again = await temporal.execute_workflow(
                SegmentRefresh.run,
                SegmentRefreshInput(now=later),
                id=f"segment-refresh-{uuid.uuid4().hex[:8]}",
                task_queue=settings.task_queue,
            )
            assert again.segments[SEGMENT] == SegmentCounts() and again.journeys_started == 0
            await _end_running_journeys(temporal, sessions, since)
    finally:
        await engine.dispose()


# ---- the schedule, on the dev server -------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=extra_args(),
        data_converter=pydantic_data_converter,
    )
    yield env
    await env.shutdown()


def dev_settings(env: WorkflowEnvironment, sqlite_url: str, mail: MailCatcher) -> Settings:
    target = env.client.service_client.config.target_host
    return make_settings(sqlite_url, mail, temporal_address=target)


async def test_the_schedule_is_created_then_updated_and_runs_the_refresh(
    dev_env: WorkflowEnvironment, sqlite_url: str, mailcatcher: MailCatcher
) -> None:
    client = dev_env.client
    first = dev_settings(dev_env, sqlite_url, mailcatcher)
    await ensure_segment_schedule(client, first)
    handle = client.get_schedule_handle(SCHEDULE_ID)
    description = await handle.describe()
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.task_queue) == ("segment_refresh", first.task_queue)
    assert [i.every for i in description.schedule.spec.intervals] == [REFRESH_EVERY]
    assert description.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP

    # At the next start (another task queue, say), the same schedule is updated, not duplicated.
    second = dev_settings(dev_env, sqlite_url, mailcatcher)
    await ensure_segment_schedule(client, second)
    action = (await handle.describe()).schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.task_queue == second.task_queue
    ids = [s.id async for s in await client.list_schedules()]
    assert ids.count(SCHEDULE_ID) == 1

    # What it starts is the refresh, and it runs on a worker.
    engine = create_engine(second.database_url)
    sessions = session_maker(engine)
    email = EmailActivities(sessions, SmtpSender(second.smtp_host, second.smtp_port), second)
    refresh = SegmentActivities(EventRouter(sessions, client, second, []))
    async with sessions.begin() as session:  # as `worker.py` does at start
        await catalogue.ensure_builtin_segments(session, utcnow())
    try:
        async with build_worker(client, second, email, flows=[], segments=refresh):
            await handle.trigger()
            async with asyncio.timeout(30):
                while not (recent := (await handle.describe()).info.recent_actions):
                    await asyncio.sleep(0.2)
                started = recent[-1].action
                assert isinstance(started, ScheduleActionExecutionStartWorkflow)
                run = client.get_workflow_handle(
                    started.workflow_id,
                    run_id=started.first_execution_run_id,
                    result_type=SegmentRefreshResult,
                )
                result = await run.result()
        assert set(result.segments) >= {"lapsed_30", "engaged_30", "cart_abandoners"}
    finally:
        await handle.delete()
        await engine.dispose()
