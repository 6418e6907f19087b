"""Ingest: store events/s through `POST /v1/events` against a bare signal-with-start loop.

    python -m bench.ingest [--events 500] [--batch 50] [--concurrency 16] [--rounds 3]

All on one Temporal dev server (SQLite, WAL), in --rounds interleaved rounds (the order rotates
each round, so drift lands on every side alike), --events per side per round:

- bare: this process calls `client.start_workflow(..., start_signal=...)` (signal-with-start) once
  per event, `--concurrency` calls in flight, with the input and signal types the API sends;
- single: one `cart_updated` per request to the API process (`uvicorn api.app:app`), the same
  number of requests in flight, through httpx;
- batch: `--batch` events per request, the same number of requests in flight;
- bare + attrs (reference, not the baseline): the bare loop with the search attributes and
  summary Nudge starts journeys with, to show what those cost the server.

Every event is a new cart of a new contact, so each one starts one journey: one
signal-with-start per event on every side. No worker polls either task queue, so what is
measured is taking the event in (for Nudge: validating it, storing it and folding it into
contacts, carts and products in SQLite, then routing it), not running journeys.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from nudge.journeys.contracts import JourneyEvent, JourneyInput
from nudge.journeys.search_attributes import start_search_attributes

NUDGE_QUEUE = "bench-ingest-nudge"
BARE_QUEUE = "bench-ingest-bare"
BARE_TYPE = "bench_sleep"  # never runs: no worker polls BARE_QUEUE
FLOW = "cart_abandonment"


class Side:
    """One way of taking events in, with what it measured summed over every round."""

    def __init__(
        self, name: str, batch: int, sender: Callable[[str, int], Callable[[int], Awaitable[None]]]
    ) -> None:
        self.name, self.batch, self.sender = name, batch, sender
        self.events = self.requests = 0
        self.seconds = 0.0
        self.latencies: list[float] = []
        self.cpu = harness.CpuTally()

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    async def measure(self, bench: harness.Bench, prefix: str, n: int, concurrency: int) -> None:
        requests = requests_for(n, self.batch)
        send = self.sender(prefix, n)

        async def timed(i: int) -> None:
            began = harness.clock()
            await send(i)
            self.latencies.append(harness.clock() - began)

        cpu = bench.cpu()
        began = harness.clock()
        await harness.pool(requests, concurrency, timed)
        self.seconds += harness.clock() - began
        self.cpu.add(cpu, bench.cpu())
        self.events += n
        self.requests += requests


def bare_sender(
    bench: harness.Bench, prefix: str, count: int, *, attributes: bool
) -> Callable[[int], Awaitable[None]]:
    now = datetime.now(UTC)
    payloads = [
        (
            JourneyInput(
                flow=FLOW,
                contact_id=i,
                key=f"{prefix}-c{i}",
                trigger_event_id=f"{prefix}-evt-{i}",
            ),
            JourneyEvent(
                id=f"{prefix}-evt-{i}",
                type="cart_updated",
                occurred_at=now,
                cart_token=f"{prefix}-c{i}",
                line_count=1,
            ),
        )
        for i in range(count)
    ]

    async def send(i: int) -> None:
        journey, event = payloads[i]
        extra: dict[str, Any] = {}
        if attributes:
            extra["search_attributes"] = start_search_attributes(FLOW, journey.contact_id)
            extra["static_summary"] = f"{FLOW} · contact {journey.contact_id} · {journey.key}"
        await bench.client.start_workflow(
            BARE_TYPE,
            journey,
            id=f"bare-{prefix}-{i}",
            task_queue=BARE_QUEUE,
            start_signal="event",
            start_signal_args=[event],
            **extra,
        )

    return send


def api_sender(
    http: httpx.AsyncClient, prefix: str, count: int, batch: int
) -> Callable[[int], Awaitable[None]]:
    events = [harness.cart_event(i, prefix) for i in range(count)]
    if batch <= 1:
        bodies = [json.dumps(event).encode() for event in events]
    else:
        bodies = [json.dumps(events[i : i + batch]).encode() for i in range(0, count, batch)]

    async def send(i: int) -> None:
        response = await http.post("/v1/events", content=bodies[i])
        if response.status_code != 202:
            raise harness.BenchError(f"the API answered {response.status_code}: {response.text}")
        accepted = response.json()["accepted"]
        expected = 1 if batch <= 1 else len(json.loads(bodies[i]))
        if accepted != expected:
            raise harness.BenchError(f"the API accepted {accepted} of {expected} events")

    return send


async def started(bench: harness.Bench, query: str, expected: int) -> int:
    """Workflows matching `query`, once visibility (eventually consistent) has caught up."""
    return await harness.wait_for_count(bench.client, query, expected, 10.0)


def requests_for(events: int, batch: int) -> int:
    return events if batch <= 1 else -(-events // batch)


async def benchmark(args: argparse.Namespace) -> int:
    n, batch, concurrency, rounds = args.events, args.batch, args.concurrency, args.rounds
    harness.say(
        f"bench.ingest: {rounds} rounds of {n} events per side, batches of {batch}, "
        f"{concurrency} requests in flight"
    )
    harness.print_machine([harness.bytecode_note(True)])
    async with harness.Bench("ingest", keep=args.keep, profile=args.profile) as bench:
        run = bench.run_id
        api, url = await bench.api(NUDGE_QUEUE)
        bench.profile(api)
        http = httpx.AsyncClient(
            base_url=url,
            headers={
                "Authorization": f"Bearer {harness.API_KEY}",
                "Content-Type": "application/json",
            },
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=300,
        )
        sides = [
            Side("bare", 1, lambda p, k: bare_sender(bench, p, k, attributes=False)),
            Side("single", 1, lambda p, k: api_sender(http, p, k, 1)),
            Side(f"batch of {batch}", batch, lambda p, k: api_sender(http, p, k, batch)),
            Side("bare + attrs", 1, lambda p, k: bare_sender(bench, p, k, attributes=True)),
        ]
        warm = max(concurrency, min(100, n // 10))
        try:
            # Warm-up, not counted: connections, the API's first requests, the server's caches.
            harness.say(f"warm-up: {warm} events each way")
            await harness.pool(warm, concurrency, sides[0].sender(f"{run}w", warm))
            await harness.pool(warm, concurrency, sides[1].sender(f"{run}w", warm))
            for r in range(rounds):
                # Interleaved, and in a rotated order each round, so that drift (the server's
                # database growing, checkpoints) lands on every side alike.
                for k in range(len(sides)):
                    side = sides[(k + r) % len(sides)]
                    harness.say(f"round {r + 1}/{rounds}: {side.name}")
                    await side.measure(bench, f"{run}r{r}s{(k + r) % len(sides)}", n, concurrency)
        finally:
            await http.aclose()
        expected = warm + 2 * rounds * n  # the warm-up, and two sides of each kind
        bare_started = await started(bench, f'WorkflowType="{BARE_TYPE}"', expected)
        nudge_started = await started(bench, f'WorkflowType="{FLOW}"', expected)
        api.check_alive()

    for side in sides:
        side.cpu.print(f"[{side.name}]")
    base = sides[0]
    rows = [
        [
            s.name,
            s.events,
            s.requests,
            s.seconds,
            s.per_second,
            harness.ms(harness.percentile(s.latencies, 50)),
            harness.ms(harness.percentile(s.latencies, 99)),
            harness.ratio(s.per_second, base.per_second),
        ]
        for s in sides
    ]
    harness.print_table(
        f"ingest: {rounds} x {n} events per side, {concurrency} requests in flight "
        f"(latency is per request; a batch request carries {batch} events)",
        ["side", "events", "requests", "wall s", "events/s", "p50 ms", "p99 ms", "x bare"],
        rows,
    )
    harness.say(
        f"workflows started: bare {bare_started}, nudge {nudge_started} "
        f"(expected {expected} each: warm-up + two sides x {rounds} rounds)"
    )
    for side in sides[1:3]:
        value = harness.ratio(side.per_second, base.per_second)
        verdict = "meets" if value >= 0.8 else "BELOW"
        harness.say(f"RATIO {side.name} / bare events/s = {value:.2f} ({verdict} the 0.8 target)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=500, help="events per side")
    parser.add_argument("--batch", type=int, default=50, help="events per batch request")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of --events per side"
    )
    parser.add_argument("--keep", type=Path, help="keep logs and databases in this folder")
    parser.add_argument("--profile", type=Path, help="py-spy the API into this folder")
    args = parser.parse_args(argv)
    if min(args.events, args.batch, args.concurrency, args.rounds) < 1:
        parser.error("--events, --batch, --concurrency and --rounds must be at least 1")
    return harness.run(lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
