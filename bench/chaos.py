"""Chaos: every expected email exactly once, whatever crashes.

    python -m bench.chaos [--journeys 1000] [--worker-kills 10] [--api-restarts 3]
                          [--workers 2 --apis 2 --database postgres]

Runs the real stack — the Temporal dev server, worker processes (`worker.py`), API processes
(uvicorn), an SMTP server and SQLite or PostgreSQL — pushes cart journeys through it with
`NUDGE_TIME_SCALE` high, and meanwhile SIGKILLs a random worker at random moments (restarting
it), SIGKILLs and restarts a random API (clients are spread over the APIs and retry the same
event ids on the next one, as through a load balancer), and takes the SMTP server down for a
while. Then it counts by Message-ID at the SMTP server and in the message log.

With `--database postgres`, a fresh database on `--postgres-url` (default
`NUDGE_TEST_POSTGRES_URL`, else the CI one), migrated once before any process starts and dropped
at the end.

Journeys come in three kinds: 60% abandon their cart (expect cart_1, cart_2, cart_3), 20% buy
after the first email (expect exactly cart_1: the order's signal ends the journey) and 20% buy
at once, the order arriving ahead of the cart in one batch (expect nothing: the send-time check
finds the order).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import select
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.harness import cart_event, free_port
from nudge.dev.mailcatcher import MailCatcher
from nudge.dev.temporal_dev import extra_args, temporal_binary
from nudge.storage.db import create_engine, migrate_async, session_maker
from nudge.storage.models import Message, MessageStatus

ROOT = Path(__file__).resolve().parent.parent
JOURNEY_HOURS = 50  # cart_1 at 2 h, cart_2 at 26 h, cart_3 at 50 h
API_KEY = "chaos-key"
FLOW = "cart_abandonment"
STEPS = ("cart_1", "cart_2", "cart_3")
POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@dataclass
class ChaosConfig:
    journeys: int = 1000
    worker_kills: int = 10
    api_restarts: int = 3
    smtp_outage: float = 5.0
    scale: float = 3600.0
    concurrency: int = 16
    seed: int = 7
    settle: float = 150.0  # after the last journey is due: 30 s attempt timeouts, retries
    workers: int = 1
    apis: int = 1
    database: str = "sqlite"
    postgres_url: str = field(
        default_factory=lambda: os.environ.get("NUDGE_TEST_POSTGRES_URL") or POSTGRES_URL
    )

    @property
    def journey_seconds(self) -> float:
        return JOURNEY_HOURS * 3600 / self.scale


@dataclass
class ChaosReport:
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    unexpected: int = 0
    before_slow_order: int = 0
    stuck: int = 0
    log_mismatches: int = 0
    worker_kills: int = 0
    api_restarts: int = 0
    smtp_down_seconds: float = 0.0
    seconds: float = 0.0
    workers: int = 1
    apis: int = 1
    database: str = "sqlite"
    notes: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (
            self.duplicates or self.lost or self.unexpected or self.stuck or self.log_mismatches
        )

    def render(self) -> str:
        rows = [
            ("expected emails", self.expected),
            ("delivered (unique Message-IDs)", self.delivered),
            ("duplicates", self.duplicates),
            ("lost", self.lost),
            ("sent after the order", self.unexpected),
            ("sent before a late order (load)", self.before_slow_order),
            ("stuck journeys", self.stuck),
            ("log vs SMTP mismatches", self.log_mismatches),
            ("workers / APIs", f"{self.workers} / {self.apis} ({self.database})"),
            ("worker SIGKILLs", self.worker_kills),
            ("API SIGKILLs", self.api_restarts),
            ("SMTP down (s)", round(self.smtp_down_seconds, 1)),
            ("wall time (s)", round(self.seconds, 1)),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"note: {note}" for note in self.notes]
        lines.append("RESULT: " + ("OK" if self.ok() else "FAILED"))
        return "\n".join(lines)


class Child:
    """A restartable child process whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def children(*procs: Child) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


def order_body(i: int, run: str) -> dict[str, Any]:
    return {
        "id": f"{run}-order-{i}",
        "type": "order_placed",
        "occurred_at": "2026-11-23T10:30:00Z",
        "contact": {"email": email_of(i, run)},
        "order": {
            "id": f"{run}-o{i}",
            "cart_token": cart_event(i, run)["cart"]["token"],
            "currency": "EUR",
            "total": "49.00",
        },
    }


def email_of(i: int, run: str) -> str:
    return str(cart_event(i, run)["contact"]["email"])


def kind_of(i: int) -> str:
    return {3: "buys_after_first", 4: "buys_at_once"}.get(i % 5, "abandons")


def expected_steps(kind: str) -> set[str]:
    return {"abandons": set(STEPS), "buys_after_first": {"cart_1"}, "buys_at_once": set()}[kind]


class Driver:
    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.config, self.workdir = config, workdir
        self.random = random.Random(config.seed)
        self.run = f"r{int(time.time())}"
        self.report = ChaosReport(
            workers=config.workers, apis=config.apis, database=config.database
        )
        self.smtp_port = free_port()
        #: When each 'buys after the first email' contact's order was first posted.
        self.ordering: dict[str, datetime] = {}
        self.api_ports = [free_port() for _ in range(config.apis)]
        self.apis = [
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=30,
            )
            for port in self.api_ports
        ]

    async def post(self, body: Any, client: int = 0) -> None:
        """Post until an API answers 202, retrying the same event ids through restarts: first
        on API `client`, then on the next one (as a load balancer would)."""
        deadline = time.monotonic() + 120
        while True:
            api = self.apis[client % len(self.apis)]
            client += 1
            try:
                response = await api.post("/v1/events", json=body)
                if response.status_code == 202:
                    return
                if response.status_code < 500:
                    raise RuntimeError(f"API refused an event: {response.text}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API stayed unreachable for 2 minutes")
            await asyncio.sleep(0.2)

    async def load(self) -> None:
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(i: int) -> None:
            async with gate:
                if kind_of(i) == "buys_at_once":
                    # The order first, as a store that sends events out of order would: the
                    # journey still starts, and the send-time check must stop it before cart_1
                    # however slowly the batch is ingested.
                    await self.post([order_body(i, self.run), cart_event(i, self.run)], i)
                else:
                    await self.post(cart_event(i, self.run), i)

        await asyncio.gather(*(one(i) for i in range(self.config.journeys)))

    async def buy_after_first(self, catcher: MailCatcher, until: float) -> None:
        """Post the order of each 'buys after the first email' contact once its cart_1 arrived."""
        waiting = {
            email_of(i, self.run): i
            for i in range(self.config.journeys)
            if kind_of(i) == "buys_after_first"
        }
        pending: set[asyncio.Task[None]] = set()
        seen = 0
        while waiting and time.monotonic() < until:
            messages = catcher.messages
            for message in messages[seen:]:
                for rcpt in message.rcpt_tos:
                    if rcpt in waiting:
                        i = waiting.pop(rcpt)
                        # From here on, no email of theirs may arrive (strict: from the first
                        # attempt on, though the order is only stored once the API has it).
                        self.ordering[rcpt] = datetime.now(UTC)
                        pending.add(asyncio.create_task(self.post(order_body(i, self.run), i + 1)))
            seen = len(messages)
            await asyncio.sleep(0.1)
        await asyncio.gather(*pending)

    async def chaos(self, workers: list[Child], apis: list[Child], catcher: MailCatcher) -> None:
        window = max(self.config.journey_seconds * 0.8, 5.0)
        events: list[tuple[float, str]] = [
            (self.random.uniform(0.5, window), "worker") for _ in range(self.config.worker_kills)
        ]
        events += [
            (self.random.uniform(0.5, window), "api") for _ in range(self.config.api_restarts)
        ]
        if self.config.smtp_outage > 0:
            events.append((self.random.uniform(window * 0.2, window * 0.6), "smtp"))
        start = time.monotonic()
        for at, what in sorted(events):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            if what == "worker":
                worker = self.random.choice(workers)
                worker.kill()
                self.report.worker_kills += 1
                await asyncio.sleep(self.random.uniform(0.2, 1.5))
                worker.start()
            elif what == "api":
                api = self.random.choice(apis)
                api.kill()
                self.report.api_restarts += 1
                await asyncio.sleep(self.random.uniform(0.2, 1.0))
                api.start()
            else:
                catcher.stop()
                await asyncio.sleep(self.config.smtp_outage)
                catcher.start()
                self.report.smtp_down_seconds += self.config.smtp_outage

    async def wait_api(self) -> None:
        for api in self.apis:
            for _ in range(300):
                try:
                    if (await api.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"the API at {api.base_url} did not come up")

    async def wait_closed(self, client: Client, until: float) -> int:
        while True:
            running = (
                await client.count_workflows(f'ExecutionStatus="Running" AND NudgeFlow="{FLOW}"')
            ).count
            if running == 0 or time.monotonic() > until:
                return running
            await asyncio.sleep(1)

    async def execute(self) -> ChaosReport:
        config, started = self.config, time.monotonic()
        async with self.database() as db_url:
            # Migrated once, before any process starts (as a release would).
            await migrate_async(db_url)
            temporal_db = self.workdir / "temporal.db"
            env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=temporal_binary(),
                dev_server_database_filename=str(temporal_db),
                dev_server_extra_args=extra_args(temporal_db),
                data_converter=pydantic_data_converter,
            )
            catcher = MailCatcher(port=self.smtp_port)
            catcher.start()
            workers, apis = self.processes(db_url, env.client.service_client.config.target_host)
            try:
                with children(*workers, *apis):
                    for child in (*workers, *apis):
                        child.start()
                    await self.wait_api()
                    chaos = asyncio.create_task(self.chaos(workers, apis, catcher))
                    await self.load()
                    due = time.monotonic() + config.journey_seconds
                    # A contact buys after their first email, however late it comes.
                    await self.buy_after_first(catcher, until=due + config.settle)
                    await chaos
                    self.report.stuck = await self.wait_closed(env.client, due + config.settle)
                await self.count(catcher, db_url)
            finally:
                catcher.stop()
                for api in self.apis:
                    await api.aclose()
                await env.shutdown()
        self.report.seconds = time.monotonic() - started
        return self.report

    @asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """SQLite in the work folder, or a fresh PostgreSQL database (dropped at the end)."""
        if self.config.database == "sqlite":
            yield f"sqlite+aiosqlite:///{self.workdir / 'nudge.storage.db'}"
            return
        base = make_url(self.config.postgres_url)
        name = f"nudge_chaos_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(
            host=base.host,
            port=base.port or 5432,
            user=base.username,
            password=base.password,
            database=base.database,
        )
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    def processes(self, db_url: str, temporal: str) -> tuple[list[Child], list[Child]]:
        """The worker and API processes, all on one task queue, database and Temporal."""
        child_env = os.environ | {
            "NUDGE_DATABASE_URL": db_url,
            "NUDGE_TEMPORAL_ADDRESS": temporal,
            "NUDGE_TASK_QUEUE": "chaos",
            "NUDGE_SMTP_HOST": "127.0.0.1",
            "NUDGE_SMTP_PORT": str(self.smtp_port),
            "NUDGE_API_KEY": API_KEY,
            "NUDGE_ENV": "development",  # the harness's keys are not secrets
            "NUDGE_TIME_SCALE": str(self.config.scale),
            "NUDGE_FROM_EMAIL": "Chaos Store <store@chaos.example>",
            # Every expected email is due at its offset: none held for the night.
            "NUDGE_QUIET_HOURS": "",
        }
        workers = [
            Child(f"worker{n}", [sys.executable, "worker.py"], child_env, self.log(f"worker{n}"))
            for n in range(self.config.workers)
        ]
        uvicorn = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1"]
        apis = [
            Child(
                f"api{n}",
                [*uvicorn, "--port", str(port), "--log-level", "warning"],
                child_env,
                self.log(f"api{n}"),
            )
            for n, port in enumerate(self.api_ports)
        ]
        return workers, apis

    def log(self, name: str) -> Path:
        # One process of each keeps the log names of the single-process run.
        single = name in ("worker0", "api0") and self.config.workers == self.config.apis == 1
        return self.workdir / f"{name.rstrip('0') if single else name}.log"

    async def count(self, catcher: MailCatcher, db_url: str) -> None:
        report, run = self.report, self.run
        expected = {
            (email_of(i, run), step)
            for i in range(self.config.journeys)
            for step in expected_steps(kind_of(i))
        }
        # The orders also start other flows (post-purchase): only the cart flow is counted.
        messages = [m for m in catcher.messages if m.message["X-Nudge-Flow"] == FLOW]
        by_id = Counter(m.message_id for m in messages if m.message_id)
        delivered = {
            (rcpt, str(m.message["X-Nudge-Step"])) for m in messages for rcpt in m.rcpt_tos
        }
        report.expected = len(expected)
        report.delivered = len(by_id)
        report.duplicates = sum(n - 1 for n in by_id.values())
        report.lost = len(expected - delivered)
        # An email that reached the SMTP server before its contact's order was even posted (the
        # machine so loaded that cart_1 arrived, or was noticed, after cart_2 was due) is no
        # error of Nudge's: counted apart. Any other email beyond the expected ones is.
        never = datetime.max.replace(tzinfo=UTC)
        before_order = {
            (rcpt, str(m.message["X-Nudge-Step"]))
            for m in messages
            for rcpt in m.rcpt_tos
            if rcpt in self.ordering and m.received_at < self.ordering.get(rcpt, never)
        }
        report.unexpected = len(delivered - expected - before_order)
        report.before_slow_order = len((delivered - expected) & before_order)
        engine = create_engine(db_url)
        async with session_maker(engine)() as session:
            sent = set(
                await session.scalars(
                    select(Message.message_id).where(
                        Message.flow == FLOW, Message.status == MessageStatus.SENT
                    )
                )
            )
            unfinished = list(
                await session.scalars(
                    select(Message.message_id).where(
                        Message.flow == FLOW,
                        Message.status.in_([MessageStatus.QUEUED, MessageStatus.SENDING]),
                    )
                )
            )
        await engine.dispose()
        report.log_mismatches = len(sent ^ set(by_id)) + len(unfinished)
        for label, items in (
            ("lost", sorted(expected - delivered)[:5]),
            ("sent after the order", sorted(delivered - expected - before_order)[:5]),
            ("sent before a late order", sorted((delivered - expected) & before_order)[:5]),
            ("duplicated", [mid for mid, n in by_id.items() if n > 1][:5]),
            ("log rows unfinished", unfinished[:5]),
        ):
            if items:
                report.notes.append(f"{label}: {items}")


async def run_chaos(config: ChaosConfig, workdir: Path | None = None) -> ChaosReport:
    if workdir is not None:
        return await Driver(config, workdir).execute()
    with tempfile.TemporaryDirectory(prefix="nudge-chaos-") as tmp:
        return await Driver(config, Path(tmp)).execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    defaults = ChaosConfig()
    parser.add_argument("--journeys", type=int, default=defaults.journeys)
    parser.add_argument("--worker-kills", type=int, default=defaults.worker_kills)
    parser.add_argument("--api-restarts", type=int, default=defaults.api_restarts)
    parser.add_argument("--smtp-outage", type=float, default=defaults.smtp_outage)
    parser.add_argument("--scale", type=float, default=defaults.scale)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--apis", type=int, default=defaults.apis)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default=defaults.database)
    parser.add_argument("--postgres-url", default=defaults.postgres_url)
    parser.add_argument("--keep", type=Path, help="keep logs and databases in this folder")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        journeys=args.journeys,
        worker_kills=args.worker_kills,
        api_restarts=args.api_restarts,
        smtp_outage=args.smtp_outage,
        scale=args.scale,
        seed=args.seed,
        workers=args.workers,
        apis=args.apis,
        database=args.database,
        postgres_url=args.postgres_url,
    )
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    print(
        f"chaos: {config.journeys} journeys, {config.worker_kills} worker kills, "
        f"{config.api_restarts} API kills, SMTP down {config.smtp_outage} s, "
        f"{config.workers} worker(s) and {config.apis} API(s) on {config.database}, "
        f"time scale {config.scale:g} ({config.journey_seconds:.0f} s per journey)",
        flush=True,
    )
    report = asyncio.run(run_chaos(config, args.keep))
    print(report.render())
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
