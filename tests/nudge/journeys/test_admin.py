"""Search attributes on a real cluster: a fresh namespace of the dev server has none of Nudge's;
the worker's start check names each missing one, the command registers them (twice is a no-op),
and `migrate` brings a database to the latest schema."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import inspect
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from nudge.journeys import admin
from nudge.storage.db import create_engine
from worker import check_search_attributes

ROOT = Path(__file__).resolve().parents[3]


async def fresh_namespace(dev_env: WorkflowEnvironment) -> Client:
    """A namespace of its own on the dev server (custom search attributes are per namespace)."""
    name = f"nudge-sa-{uuid.uuid4().hex[:8]}"
    await dev_env.client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name,
            workflow_execution_retention_period=Duration(seconds=86400),
        )
    )
    client = Client(**(dev_env.client.config() | {"namespace": name}))
    # A new namespace reaches the server's namespace cache within seconds: wait (bounded).
    async with asyncio.timeout(30):
        while True:
            try:
                await admin.missing_search_attributes(client)
                return client
            except RPCError:
                await asyncio.sleep(0.2)


async def test_the_worker_names_missing_search_attributes_and_the_command_registers_them(
    dev_env: WorkflowEnvironment,
) -> None:
    client = await fresh_namespace(dev_env)
    missing = await admin.missing_search_attributes(client)
    assert missing == [
        "NudgeFlow (Keyword)",
        "NudgeContact (Keyword)",
        "NudgeStep (Keyword)",
        "NudgeStatus (Keyword)",
        "NudgeInstallation (Keyword)",
    ]
    with pytest.raises(SystemExit) as stopped:
        await check_search_attributes(client)
    assert "NudgeFlow (Keyword)" in str(stopped.value.code)
    assert "python -m nudge.journeys.admin search-attributes" in str(stopped.value.code)

    added = await admin.register_search_attributes(client)
    assert added == [name.split(" ")[0] for name in missing]
    assert await admin.register_search_attributes(client) == []  # idempotent
    async with asyncio.timeout(30):  # registered attributes show in the listing at once
        while await admin.missing_search_attributes(client):
            await asyncio.sleep(0.2)
    await check_search_attributes(client)  # passes


async def test_the_commands_from_the_command_line(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = await fresh_namespace(dev_env)
    target = dev_env.client.service_client.config.target_host
    env = {
        "PATH": "/usr/bin:/bin",
        "NUDGE_TEMPORAL_ADDRESS": target,
        "NUDGE_TEMPORAL_NAMESPACE": client.namespace,
        "NUDGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'release.db'}",
        "TEMPORAL_CONFIG_FILE": str(tmp_path / "none.toml"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nudge.journeys.admin", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    check = await asyncio.to_thread(run, "search-attributes", "--check")
    assert check.returncode == 1 and "missing: NudgeInstallation (Keyword)" in check.stdout
    first = await asyncio.to_thread(run, "search-attributes")
    assert first.returncode == 0 and "registered NudgeFlow" in first.stdout, first.stderr
    again = await asyncio.to_thread(run, "search-attributes")
    assert "already registered" in again.stdout
    migrated = await asyncio.to_thread(run, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    engine = create_engine(env["NUDGE_DATABASE_URL"])
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    await engine.dispose()
    assert {"installation", "journeys", "messages"} <= set(tables)
