"""Segments at scale on PostgreSQL: full evaluation, preview, bulk refresh, one-contact refresh.

    python -m bench.segments [--contacts 100000] [--orders 500000]
                             [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Creates a fresh database next to the one named (`nudge_bench_<random>`, dropped at the end),
migrates it, and generates a store in SQL with `generate_series`: contacts (a third subscribed,
some with profile properties and tags), orders skewed towards some contacts (as real stores are;
2% refunded, over two years), a tenth as many open carts with lines, product views, one sent email
per contact on average and a quarter as many opens and clicks. Then ANALYZE, and it times:

- baselines, in the same run on the same data: `SELECT count(*) FROM orders`, and the
  per-contact order aggregate (`GROUP BY contact_id`) that every order condition needs;
- the full evaluation (`SELECT count(*)` of the members) of every built-in segment, of a custom
  definition mixing every kind of condition, and of RFM scores;
- a preview (count + sample of 10) of the custom definition;
- the first computation of every built-in's members (INSERT ... SELECT, changes recorded);
- the bulk refresh of `lapsed_30` one day later (set-based: only the movers are written);
- `refresh_contact` (every segment, one contact, one UNION ALL query) for 20 contacts: median.

Times are the median of --repeat runs after one warm-up. Figures are printed, never asserted:
they mean something next to the baselines measured in the same run, on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench import harness
from nudge.segments import catalogue, compiler, definition, membership, rfm
from nudge.storage.db import create_engine, migrate_async, session_maker

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)

CUSTOM = {
    "all": [
        {
            "any": [
                {"kind": "orders", "count": {"gte": 2}, "within_days": 365},
                {"kind": "orders", "total": {"gte": "300"}},
            ]
        },
        {"kind": "property", "name": "city", "op": "eq", "value": "Lisbon"},
        {"kind": "consent", "in": ["subscribed", "implied"]},
        {"not": {"kind": "engagement", "within_days": 30}},
        {"not": {"kind": "tag", "tag": "wholesale"}},
    ]
}


def generate(contacts: int, orders: int) -> list[str]:
    """The store, in SQL (one statement each, run in order)."""
    now = f"TIMESTAMPTZ '{NOW.isoformat()}'"
    carts, views = max(contacts // 10, 1), max(contacts // 2, 1)
    messages, opens = contacts, max(contacts // 4, 1)
    return [
        f"""
        INSERT INTO contacts (id, email, first_name, consent, consent_updated_at, properties,
                              created_at, updated_at)
        SELECT i, 'c' || i || '@bench.example', 'C' || i,
               CASE WHEN i % 3 = 0 THEN 'subscribed' WHEN i % 17 = 0 THEN 'unsubscribed'
                    ELSE 'implied' END,
               CASE WHEN i % 3 = 0 OR i % 17 = 0 THEN {now} - random() * INTERVAL '365 days' END,
               CASE WHEN i % 2 = 0
                    THEN json_build_object('city', (ARRAY['Lisbon', 'Porto', 'Faro'])[1 + i % 3],
                                           'age', 18 + i % 60)
                    ELSE '{{}}'::json END,
               {now} - random() * INTERVAL '900 days', {now}
        FROM generate_series(1, {contacts}) AS i
        """,
        f"SELECT setval(pg_get_serial_sequence('contacts', 'id'), {contacts})",
        f"""
        INSERT INTO contact_tags (contact_id, tag, created_at)
        SELECT i, CASE WHEN i % 2 = 0 THEN 'wholesale' ELSE 'newsletter' END, {now}
        FROM generate_series(1, {contacts}, 7) AS i
        """,
        # Skewed: low ids buy far more often than high ones (power of a uniform draw).
        f"""
        INSERT INTO orders (id, contact_id, currency, total, placed_at, status)
        SELECT 'o' || i, 1 + floor(power(random(), 2) * {contacts})::bigint, 'EUR',
               round((5 + random() * 295)::numeric, 2),
               {now} - random() * INTERVAL '730 days',
               CASE WHEN random() < 0.02 THEN 'refunded' ELSE 'placed' END
        FROM generate_series(1, {orders}) AS i
        """,
        f"""
        INSERT INTO carts (token, contact_id, currency, updated_at)
        SELECT 'cart' || i, 1 + floor(random() * {contacts})::bigint, 'EUR',
               {now} - random() * INTERVAL '30 days'
        FROM generate_series(1, {carts}) AS i
        """,
        f"""
        INSERT INTO cart_lines (cart_token, position, product_id, title, price, quantity)
        SELECT 'cart' || i, 0, 'p' || (i % 1000), 'Product', 19.90, 1
        FROM generate_series(1, {carts}) AS i WHERE i % 5 <> 0
        """,
        f"""
        INSERT INTO events (id, type, contact_id, occurred_at, received_at, payload, product_id)
        SELECT 'view' || i, 'product_viewed', 1 + floor(random() * {contacts})::bigint,
               {now} - random() * INTERVAL '60 days', {now},
               json_build_object('product', json_build_object('id', 'p' || (i % 1000))),
               'p' || (i % 1000)
        FROM generate_series(1, {views}) AS i
        """,
        f"""
        INSERT INTO messages (message_id, workflow_id, trigger_event_id, step, flow, contact_id,
                              template, status, attempts, created_at, sent_at)
        SELECT 'm' || i || '@bench.example', 'wf' || i, 'evt' || i, 'cart_1',
               'cart_abandonment', 1 + floor(random() * {contacts})::bigint, 'cart_1', 'sent', 1,
               {now}, {now} - random() * INTERVAL '365 days'
        FROM generate_series(1, {messages}) AS i
        """,
        f"""
        INSERT INTO message_events (message_id, contact_id, kind, at, machine)
        SELECT message_id, contact_id, CASE WHEN random() < 0.7 THEN 'open' ELSE 'click' END,
               sent_at + INTERVAL '1 hour', random() < 0.1
        FROM messages WHERE random() < {opens / messages}
        """,
    ]


class Run:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], repeat: int) -> None:
        self.sessions, self.repeat = sessions, repeat

    async def timed(self, work: Callable[[AsyncSession], Awaitable[Any]]) -> tuple[float, Any]:
        """Median seconds of `repeat` runs after a warm-up, each in a rolled-back transaction."""
        times, result = [], None
        for attempt in range(self.repeat + 1):
            async with self.sessions() as session:
                started = harness.clock()
                result = await work(session)
                elapsed = harness.clock() - started
                await session.rollback()
            if attempt:
                times.append(elapsed)
        return statistics.median(times), result

    async def count(self, query: Any) -> tuple[float, int]:
        async def work(session: AsyncSession) -> int:
            return int(
                await session.scalar(select(func.count()).select_from(query.subquery())) or 0
            )

        seconds, result = await self.timed(work)
        return seconds, int(result)


async def bench(url: str, contacts: int, orders: int, repeat: int) -> None:
    engine = create_engine(url)
    sessions = session_maker(engine)
    run = Run(sessions, repeat)
    try:
        harness.say(f"generating {contacts:,} contacts and {orders:,} orders ...")
        started = harness.clock()
        async with engine.begin() as connection:
            for statement in generate(contacts, orders):
                await connection.execute(text(statement))
        # Statistics and the visibility map now, so autovacuum does not wake up mid-measurement.
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM (ANALYZE)"))
        generated = harness.clock() - started
        async with sessions() as session:
            sizes = {
                table: int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
                for table in ("contacts", "orders", "carts", "events", "messages", "message_events")
            }
        harness.say(
            f"generated in {generated:.1f} s: "
            + ", ".join(f"{n:,} {table}" for table, n in sizes.items())
        )
        harness.say("")

        count_orders, _ = await run.count(select(text("1")).select_from(text("orders")))
        aggregate, buyers = await run.count(
            select(text("contact_id"))
            .select_from(text("orders"))
            .group_by(text("contact_id"))
            .having(text("count(*) > 0 AND sum(total) >= 0 AND max(placed_at) IS NOT NULL"))
        )
        base = aggregate
        rows: list[list[object]] = [
            [
                "baseline: SELECT count(*) FROM orders",
                harness.ms(count_orders),
                harness.ratio(count_orders, base),
                sizes["orders"],
            ],
            ["baseline: GROUP BY contact_id (count, sum, max)", harness.ms(aggregate), 1.0, buyers],
        ]
        for builtin in catalogue.BUILTINS:
            seconds, members = await run.count(
                compiler.compile_segment(definition.parse(builtin.definition), NOW)
            )
            rows.append(
                [
                    f"segment {builtin.id}",
                    harness.ms(seconds),
                    harness.ratio(seconds, base),
                    members,
                ]
            )
        custom = definition.parse(CUSTOM)
        seconds, members = await run.count(compiler.compile_segment(custom, NOW))
        rows.append(
            [
                "segment custom (and/or/not, 6 kinds)",
                harness.ms(seconds),
                harness.ratio(seconds, base),
                members,
            ]
        )
        viewed = definition.parse({"kind": "viewed_product", "product_id": "p7", "within_days": 7})
        seconds, members = await run.count(compiler.compile_segment(viewed, NOW))
        rows.append(
            [
                "segment viewed_product p7 in 7 days",
                harness.ms(seconds),
                harness.ratio(seconds, base),
                members,
            ]
        )
        seconds, scored = await run.count(rfm.rfm_query())
        rows.append(
            ["RFM scores of every buyer", harness.ms(seconds), harness.ratio(seconds, base), scored]
        )

        async def preview(session: AsyncSession) -> int:
            count, _sample = await catalogue.preview(session, custom, NOW, 10)
            return count

        seconds, members = await run.timed(preview)
        rows.append(
            [
                "preview custom (count + sample of 10)",
                harness.ms(seconds),
                harness.ratio(seconds, base),
                members,
            ]
        )
        harness.print_table(
            f"Full evaluation at {contacts:,} contacts / {orders:,} orders (median of {repeat}, PostgreSQL)",
            ["what", "ms", "x GROUP BY", "rows"],
            rows,
        )

        # Stored membership: computed once, then moved by the schedule and by events.
        started = harness.clock()
        async with sessions.begin() as session:
            await catalogue.ensure_builtin_segments(session, NOW)
        first = harness.clock() - started
        async with sessions() as session:
            members = sum((await catalogue.member_counts(session)).values())
        lapsed = definition.parse(
            next(b.definition for b in catalogue.BUILTINS if b.id == "lapsed_30")
        )
        started = harness.clock()
        async with sessions.begin() as session:
            moved = await membership.refresh_segment(
                session, "lapsed_30", lapsed, NOW + timedelta(days=1)
            )
        bulk = harness.clock() - started
        started = harness.clock()
        async with sessions.begin() as session:
            every = await membership.refresh_time_based(session, NOW + timedelta(days=2))
        scheduled = harness.clock() - started

        one: list[float] = []
        step = max(contacts // 20, 1)
        for cid in [contacts, *range(1, contacts + 1, step)[:20]]:  # the first one warms up
            async with sessions() as session:
                started = harness.clock()
                await membership.refresh_contact(session, cid, NOW + timedelta(days=2))
                one.append(harness.clock() - started)
                await session.rollback()
        one = one[1:]
        harness.print_table(
            "Stored membership",
            ["what", "ms", "x GROUP BY", "rows written"],
            [
                [
                    "first computation of every built-in (INSERT ... SELECT)",
                    harness.ms(first),
                    harness.ratio(first, base),
                    2 * members,
                ],
                [
                    "bulk refresh of lapsed_30, a day later",
                    harness.ms(bulk),
                    harness.ratio(bulk, base),
                    moved.entered + moved.exited,
                ],
                [
                    "scheduled refresh of every time-based segment",
                    harness.ms(scheduled),
                    harness.ratio(scheduled, base),
                    sum(c.entered + c.exited for c in every.values()),
                ],
                [
                    f"refresh_contact, one contact, every segment (median of {len(one)})",
                    harness.ms(statistics.median(one)),
                    harness.ratio(statistics.median(one), base),
                    "-",
                ],
                [
                    f"refresh_contact, p95 of {len(one)}",
                    harness.ms(harness.percentile(one, 95)),
                    harness.ratio(harness.percentile(one, 95), base),
                    "-",
                ],
            ],
        )
    finally:
        await engine.dispose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    args = parser.parse_args()

    base = make_url(args.database_url)
    if base.get_backend_name() != "postgresql":
        raise harness.BenchError("this benchmark runs on PostgreSQL (postgresql+asyncpg://...)")
    name = f"nudge_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(
        host=base.host,
        port=base.port or 5432,
        user=base.username,
        password=base.password,
        database=base.database,
    )
    harness.print_machine(
        [
            ("postgresql", str(await admin.fetchval("SHOW server_version"))),
            (
                "shared_buffers / work_mem",
                f"{await admin.fetchval('SHOW shared_buffers')} / {await admin.fetchval('SHOW work_mem')}",
            ),
            ("database", f"{name} (dropped at the end)"),
        ]
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = base.set(database=name).render_as_string(hide_password=False)
        await migrate_async(url)
        await bench(url, args.contacts, args.orders, args.repeat)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(harness.run(main))
