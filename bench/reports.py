"""Reports at scale on PostgreSQL: the figures of nudge/analytics/metrics.py over a million messages.

    python -m bench.reports [--messages 1000000] [--contacts 200000] [--orders 100000]
                            [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Creates a fresh database next to the one named (`nudge_bench_<random>`, dropped at the end),
migrates it and generates in SQL (`generate_series`): contacts, messages of 4 flows x 3 steps
sent over 90 days (step 1 of each flow in variants a and b), human opens for a quarter of them,
machine opens for a tenth, clicks for a twentieth, bounces for 1%, and orders over the same 90
days (a share of them a day after a click, so they are attributed). Then ANALYZE, and it times
what a report runs: every flow's figures (the overview), one flow per step, per step and variant
and per day, and one A/B evaluation. Each is one SQL aggregate that returns a row per group:
no message row reaches Python. Times are the median of --repeat runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from nudge.analytics import abtest, metrics
from nudge.settings import Settings
from nudge.storage.db import create_engine, migrate_async, session_maker

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)

GENERATE = [
    """INSERT INTO contacts (email, consent, properties, created_at, updated_at)
       SELECT 'c' || i || '@bench.example', 'subscribed', '{}', :now, :now
       FROM generate_series(1, :contacts) i""",
    """INSERT INTO messages (message_id, workflow_id, trigger_event_id, step, flow, contact_id,
                             template, status, attempts, variant, transactional, sent_at,
                             created_at)
       SELECT 'm' || i || '@bench', 'w' || i, 't', 'step_' || (i % 3 + 1),
              'flow_' || ((i / 12) % 4 + 1), 1 + (i::bigint * 7919) % :contacts, 'cart_1', 'sent', 1,
              CASE WHEN i % 3 = 0 THEN CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END END, false,
              CAST(:now AS timestamptz) - (i % 90) * interval '1 day' - (i % 86400) * interval '1 second',
              CAST(:now AS timestamptz) - (i % 90) * interval '1 day' - (i % 86400) * interval '1 second'
       FROM generate_series(1, :messages) i""",
    """INSERT INTO message_events (message_id, contact_id, kind, at, machine)
       SELECT m.message_id, m.contact_id, e.kind, m.sent_at + interval '1 hour', e.machine
       FROM messages m
       JOIN (VALUES ('open', false, 4, 0), ('open', true, 10, 3), ('click', false, 20, 0),
                    ('bounce', false, 100, 7))
            AS e(kind, machine, every, at_rest)
         ON (substring(m.message_id from 2 for position('@' in m.message_id) - 2))::bigint
            % e.every = e.at_rest""",
    """INSERT INTO orders (id, contact_id, currency, total, placed_at, status)
       SELECT 'o' || i, 1 + (i::bigint * 104729) % :contacts, 'EUR', 20 + i % 180,
              CAST(:now AS timestamptz) - (i % 90) * interval '1 day', 'placed'
       FROM generate_series(1, :orders) i""",
    # A share of orders a day after a click: attributed.
    """INSERT INTO orders (id, contact_id, currency, total, placed_at, status)
       SELECT 'oc' || e.id, e.contact_id, 'EUR', 49, e.at + interval '1 day', 'placed'
       FROM message_events e WHERE e.kind = 'click' AND e.id % 5 = 0""",
]


async def timed(
    label: str, repeat: int, run: Callable[[], Awaitable[Any]], results: dict[str, float]
) -> Any:
    await run()  # warm-up
    times, value = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        value = await run()
        times.append(time.perf_counter() - started)
    results[label] = statistics.median(times)
    print(f"  {label:<44} {results[label] * 1000:8.0f} ms")
    return value


async def main(args: argparse.Namespace) -> None:
    base = make_url(args.database_url)
    name = f"nudge_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(
        host=base.host, port=base.port or 5432, user=base.username, database=base.database
    )
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        await migrate_async(url)
        engine = create_engine(url)
        sessions = session_maker(engine)
        settings = Settings(database_url=url)
        params = {
            "now": NOW,
            "contacts": args.contacts,
            "messages": args.messages,
            "orders": args.orders,
        }
        started = time.perf_counter()
        async with sessions.begin() as session:
            for statement in GENERATE:
                await session.execute(text(statement), params)
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE"))
        async with sessions() as session:
            counts = {
                table: await session.scalar(text(f"SELECT count(*) FROM {table}"))
                for table in ("messages", "message_events", "orders")
            }
        print(f"generated in {time.perf_counter() - started:.0f} s: {counts}")
        results: dict[str, float] = {}
        period = metrics.Period(start=NOW.replace(month=10, day=25))

        async def run(**scope: Any) -> list[metrics.Row]:
            async with sessions() as session:
                return await metrics.figures(session, settings, **scope)

        async def evaluate() -> abtest.Verdict | None:
            async with sessions() as session:
                return await abtest.evaluate(session, settings, "flow_1", "step_1", record=False)

        rows = await timed(
            "overview: every flow, all time", args.repeat, lambda: run(by=("flow",)), results
        )
        await timed(
            "overview: every flow, last 30 days",
            args.repeat,
            lambda: run(by=("flow",), period=period),
            results,
        )
        await timed(
            "one flow per step", args.repeat, lambda: run(flow="flow_1", by=("step",)), results
        )
        await timed(
            "one flow per step and variant",
            args.repeat,
            lambda: run(flow="flow_1", by=("step", "variant")),
            results,
        )
        await timed(
            "one flow per day", args.repeat, lambda: run(flow="flow_1", by=("day",)), results
        )
        verdict = await timed("A/B evaluation of one step", args.repeat, evaluate, results)
        for row in rows:
            f = row.figures
            print(
                f"  {row.keys['flow']}: sent {f.sent} opens {f.opens} clicks {f.clicks} "
                f"orders {f.conversions} revenue {f.revenue} RPR {f.revenue_per_recipient}"
            )
        if verdict is not None:
            print(f"  A/B flow_1/step_1: {verdict.probabilities}")
        await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    import asyncio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=200_000)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    asyncio.run(main(parser.parse_args()))
