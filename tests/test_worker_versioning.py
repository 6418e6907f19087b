"""Worker Versioning as an option (NUDGE_WORKER_DEPLOYMENT + NUDGE_WORKER_BUILD_ID): on the dev
server, a versioned worker runs the journeys once its version is made current, and each journey
records the version and behaviour it runs under."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from pydantic import ValidationError
from temporalio.api.enums.v1 import VersioningBehavior
from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.email import EmailActivities
from api.app import create_app
from conftest import make_settings
from nudge.dev.mailcatcher import MailCatcher
from nudge.mail.smtp import SmtpSender
from nudge.settings import Settings
from nudge.storage.db import create_engine, session_maker
from support import cart_event, new_email, new_id
from worker import build_worker
from workflows.cart_abandonment import CartAbandonment

FLOWS = (CartAbandonment,)


def test_a_deployment_needs_a_build_id() -> None:
    with pytest.raises(ValidationError, match="NUDGE_WORKER_BUILD_ID"):
        Settings(worker_deployment="nudge")
    with pytest.raises(ValidationError, match="worker_versioning"):
        Settings(worker_deployment="nudge", worker_build_id="v1", worker_versioning="latest")


async def test_a_versioned_worker_runs_journeys_once_its_version_is_current(
    dev_env: WorkflowEnvironment, sqlite_url: str, mailcatcher: MailCatcher
) -> None:
    client = dev_env.client
    deployment = f"nudge-{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        sqlite_url,
        mailcatcher,
        temporal_address=client.service_client.config.target_host,
        worker_deployment=deployment,
        worker_build_id="release-42",
        time_scale=3600.0,
    )
    engine = create_engine(settings.database_url)
    email = EmailActivities(
        session_maker(engine), SmtpSender(settings.smtp_host, settings.smtp_port), settings
    )
    app = create_app(settings, client, flows=FLOWS)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n") as api,
        build_worker(client, settings, email, flows=FLOWS),
    ):
        # What an operator does once the release's workers run:
        # temporal worker deployment set-current-version --deployment-name ... --build-id ...
        async with asyncio.timeout(30):  # the version exists once its worker has polled
            while True:
                try:
                    await client.workflow_service.set_worker_deployment_current_version(
                        SetWorkerDeploymentCurrentVersionRequest(
                            namespace=client.namespace,
                            deployment_name=deployment,
                            build_id="release-42",
                            identity="test",
                        )
                    )
                    break
                except RPCError:
                    await asyncio.sleep(0.2)
        person = new_email()
        response = await api.post(
            "/v1/events",
            json=cart_event(person, new_id("cart")),
            headers={"Authorization": f"Bearer {settings.api_key}"},
        )
        [workflow_id] = response.json()["results"][0]["journeys"]
        async with asyncio.timeout(30):
            while not [m for m in mailcatcher.messages if person in m.rcpt_tos]:
                await asyncio.sleep(0.05)
        handle = client.get_workflow_handle(workflow_id)
        info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
        assert info.deployment_version.deployment_name == deployment
        assert info.deployment_version.build_id == "release-42"
        assert info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_AUTO_UPGRADE
        await handle.terminate(reason="test over")
    await engine.dispose()
