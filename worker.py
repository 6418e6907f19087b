"""The Nudge worker: runs every flow and activity on the configured task queue.

python worker.py
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.email import EmailActivities
from nudge.db import create_engine, session_maker
from nudge.mail import SmtpSender
from nudge.settings import Settings, get_settings
from workflows import FLOWS

# Parked journeys are cheap on the server; the cache bounds what they cost the worker's memory.
MAX_CACHED_WORKFLOWS = 2000


def build_worker(
    client: Client,
    settings: Settings,
    email: EmailActivities,
    *,
    flows: Sequence[type] = FLOWS,
    **options: Any,
) -> Worker:
    options.setdefault("max_cached_workflows", MAX_CACHED_WORKFLOWS)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=list(flows),
        activities=[email.send_email],
        **options,
    )


def email_activities(settings: Settings, engine: AsyncEngine) -> EmailActivities:
    sender = SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_timeout)
    return EmailActivities(session_maker(engine), sender, settings)


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )


async def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    client = await connect(settings)
    engine = create_engine(settings.database_url)
    email = email_activities(settings, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with build_worker(client, settings, email):
        logging.info(
            "worker polling task queue %r at %s", settings.task_queue, settings.temporal_address
        )
        await stop.wait()
    await email.sender.close()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
