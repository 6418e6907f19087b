"""The Nudge worker: runs every flow and activity on the configured task queue.

python worker.py

At start it also stores the built-in segments (idempotent) and creates, or updates, the Temporal
Schedule `nudge-segment-refresh` that runs the `segment_refresh` workflow every hour.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities.contacts import ContactActivities
from activities.email import EmailActivities
from activities.outbound import WebhookActivities
from activities.segments import SegmentActivities
from nudge.journeys.admin import SearchAttributesMissing, require_search_attributes
from nudge.journeys.connection import connect
from nudge.journeys.contracts import SegmentRefreshInput
from nudge.journeys.routing import EventRouter
from nudge.mail.health import stored_status
from nudge.mail.smtp import SmtpSender, sender_from_settings
from nudge.mail.transport import SenderFault
from nudge.segments import catalogue
from nudge.settings import Settings, UnsafeSecrets, get_settings
from nudge.storage.db import create_engine, session_maker
from nudge.storage.models import utcnow
from workflows import FLOWS
from workflows.segment_refresh import REFRESH_EVERY, SCHEDULE_ID, SegmentRefresh

# Parked journeys are cheap on the server; the cache bounds what they cost the worker's memory.
MAX_CACHED_WORKFLOWS = 2000
# Most workflow tasks of a burst of new journeys arrive on the shared (non-sticky) queue: more
# pollers, split evenly, drained a backlog 2.8x faster than the SDK's defaults (5, ratio 0.2).
WORKFLOW_TASK_POLLS = 20
NONSTICKY_TO_STICKY_POLL_RATIO = 1.0


def build_worker(
    client: Client,
    settings: Settings,
    email: EmailActivities,
    *,
    flows: Sequence[type] = FLOWS,
    segments: SegmentActivities | None = None,
    contacts: ContactActivities | None = None,
    webhooks: WebhookActivities | None = None,
    **options: Any,
) -> Worker:
    """A worker for `flows` and the segment refresh; its activity runs where `segments` is given.
    The contact steps (profile, update) run on `email`'s database unless `contacts` is given,
    outbound webhooks with `WebhookActivities(settings)` unless `webhooks` is."""
    options.setdefault("max_cached_workflows", MAX_CACHED_WORKFLOWS)
    options.setdefault("max_concurrent_workflow_task_polls", WORKFLOW_TASK_POLLS)
    options.setdefault("nonsticky_to_sticky_poll_ratio", NONSTICKY_TO_STICKY_POLL_RATIO)
    contacts = contacts or ContactActivities(email.sessions, settings)
    activities: list[Any] = [email.send_email, contacts.profile, contacts.update_contact]
    activities.append((webhooks or WebhookActivities(settings)).call_webhook)
    if segments is not None:
        activities.append(segments.refresh_time_based_segments)
    if settings.worker_deployment and settings.worker_build_id:
        options.setdefault("deployment_config", deployment_config(settings))
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[*flows, SegmentRefresh],
        activities=activities,
        **options,
    )


def deployment_config(settings: Settings) -> WorkerDeploymentConfig:
    """Worker Versioning (README "Rolling out flow changes"): this worker is one version
    (deployment name + build id) of the Worker Deployment; journeys without a behaviour of
    their own follow NUDGE_WORKER_VERSIONING."""
    assert settings.worker_deployment and settings.worker_build_id
    behavior = {
        "auto_upgrade": VersioningBehavior.AUTO_UPGRADE,
        "pinned": VersioningBehavior.PINNED,
    }[settings.worker_versioning]
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(
            deployment_name=settings.worker_deployment, build_id=settings.worker_build_id
        ),
        use_worker_versioning=True,
        default_versioning_behavior=behavior,
    )


async def ensure_segment_schedule(client: Client, settings: Settings) -> None:
    """Create the hourly segment refresh schedule, or bring an existing one up to date (task
    queue, interval). Overlapping runs are skipped: a slow refresh is never run twice at once."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            SegmentRefresh.run,
            SegmentRefreshInput(),
            id=SCHEDULE_ID,
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=REFRESH_EVERY)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(SCHEDULE_ID).update(update)


async def check_search_attributes(client: Client) -> None:
    """Stop at start, naming them, if the namespace lacks Nudge's search attributes (every
    journey would fail to start). Credentials that may not list them only get a warning."""
    try:
        await require_search_attributes(client)
    except SearchAttributesMissing as err:
        raise SystemExit(str(err)) from None
    except RPCError as err:
        logging.warning("could not check the namespace's search attributes: %s", err.message)


def email_activities(settings: Settings, engine: AsyncEngine) -> EmailActivities:
    """The send activity, on a sender that records its faults for `/healthz` (one row per task
    queue, nudge/mail/health.py), named as Temporal names this worker (pid@host)."""
    sessions = session_maker(engine)
    identity = f"{os.getpid()}@{socket.gethostname()}"
    on_status = stored_status(sessions, settings.task_queue, identity)
    return EmailActivities(sessions, sender_from_settings(settings, on_status), settings)


async def check_smtp(sender: SmtpSender) -> None:
    """Say at start where mail goes and whether the server takes the login. A sender fault is
    logged once by the sender (and again only when it changes), and recorded for `/healthz`
    (as is a login that works, clearing it); sends retry until it is fixed."""
    how = sender.submission
    where = f"{sender.host}:{sender.port} ({how.security}"
    where += f", as {how.username})" if how.username else ", no login)"
    try:
        await sender.check()
    except SenderFault:
        return
    except (aiosmtplib.SMTPException, OSError) as err:
        logging.warning("SMTP server %s not reachable yet (%s); sends retry", where, err)
        return
    logging.info("SMTP server %s takes mail", where)


async def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    settings.check_secrets()
    client = await connect(settings)
    await check_search_attributes(client)
    engine = create_engine(settings.database_url)
    email = email_activities(settings, engine)
    await check_smtp(email.sender)
    sessions = session_maker(engine)
    async with sessions.begin() as session:
        await catalogue.ensure_builtin_segments(session, utcnow())
    await ensure_segment_schedule(client, settings)
    segments = SegmentActivities(EventRouter(sessions, client, settings, FLOWS))
    webhooks = WebhookActivities(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with build_worker(client, settings, email, segments=segments, webhooks=webhooks):
        logging.info(
            "worker polling task queue %r at %s, namespace %r",
            settings.task_queue,
            client.service_client.config.target_host,
            client.namespace,
        )
        await stop.wait()
    await email.sender.close()
    await webhooks.aclose()
    await engine.dispose()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except UnsafeSecrets as err:
        # Said plainly, without a traceback: it is the operator's setting, not a bug.
        raise SystemExit(str(err)) from None
