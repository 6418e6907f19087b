"""Journeys: N real cart journeys end to end against N bare workflows of the same shape.

    python -m bench.journeys [--journeys 200] [--scale 36000] [--concurrency 16]
                             [--start api|ingestor] [--backlog] [--profile DIR]

Both phases run one after the other on the same Temporal dev server (SQLite, WAL), each with
its worker in a separate process:

A. bare: a workflow of the cart flow's shape (wait 2 h, no-op activity, wait 1 d, no-op, wait
   24 h, no-op; every delay divided by --scale), started by signal-with-start as the API does,
   with the same input, signal and activity payload types as Nudge's, on a bare worker
   (`python -m bench.journeys --bare-worker`) with the same workflow cache.
B. nudge: N `cart_abandonment` journeys on `python worker.py` — 3 renders, 3 real SMTP sends to
   the mail catcher (its own process), the message log in SQLite — started by posting one
   `cart_updated` per journey to the real API (`uvicorn api.app:app`, its own process), or with
   --start ingestor by `nudge.journeys.routing.EventRouter` in this process (same database writes and
   signal-with-start, no HTTP).

Throughput is journeys / (first start -> last workflow closed, by the server's close times).
At the default scale a journey's timers alone take 50 h / 36000 = 5 s, so at small N both
sides sit near that floor; the gap over the floor is the processing time.

With --backlog every journey is started before its worker runs, and the clock runs from the
worker being ready to the last close: journey execution alone, without ingest in the way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

# The sandbox re-imports this module for every bare journey: keep the heavy imports out of it.
with workflow.unsafe.imports_passed_through():
    import httpx
    from sqlalchemy import func, select
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client
    from temporalio.worker import Worker

    import bench.harness as harness
    from nudge.journeys.connection import connect
    from nudge.journeys.contracts import JourneyEvent, JourneyInput, SendEmailInput, SendEmailResult
    from nudge.settings import Settings

BARE_TYPE = "bench_bare_journey"
NUDGE_FLOW = "cart_abandonment"
BARE_QUEUE = "bench-bare"
NUDGE_QUEUE = "bench-nudge"
STORY: tuple[tuple[timedelta, str], ...] = (
    (timedelta(hours=2), "cart_1"),
    (timedelta(days=1), "cart_2"),
    (timedelta(hours=24), "cart_3"),
)
EMAILS_PER_JOURNEY = len(STORY)
TIMER_TOTAL = sum((delay for delay, _ in STORY), timedelta())
# The same activity options as Journey.send (workflows/journey.py).
SEND_ATTEMPT_TIMEOUT = timedelta(seconds=30)
SEND_DEADLINE = timedelta(hours=6)
SEND_DEADLINE_FLOOR = timedelta(minutes=5)
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
)
MAX_CACHED_WORKFLOWS = 2000  # as worker.py


# ---- the bare side ---------------------------------------------------------------------------


@activity.defn(name="bench_noop_send")
async def noop_send(job: SendEmailInput) -> SendEmailResult:
    """The bare journey's 'email': send_email's input and result types, and no work."""
    return SendEmailResult(message_id=f"{job.workflow_id}/{job.step}", status="sent")


@workflow.defn(name=BARE_TYPE)
class BareJourney:
    """The cart flow's shape and nothing else: three timers, three no-op activities."""

    def __init__(self) -> None:
        self._exit = False
        self._seen: list[str] = []

    @workflow.signal
    def event(self, event: JourneyEvent) -> None:
        self._seen.append(event.id)

    @workflow.run
    async def run(self, journey: JourneyInput) -> int:
        info = workflow.info()
        deadline = max(SEND_DEADLINE / journey.time_scale, SEND_DEADLINE_FLOOR)
        sent = 0
        for delay, step in STORY:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._exit, timeout=delay / journey.time_scale
                )
            result = await workflow.execute_activity(
                noop_send,
                SendEmailInput(
                    workflow_id=info.workflow_id,
                    trigger_event_id=journey.trigger_event_id,
                    flow=journey.flow,
                    step=step,
                    template=step,
                    contact_id=journey.contact_id,
                    key=journey.key,
                    journey_started_at=info.start_time,
                ),
                start_to_close_timeout=SEND_ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=deadline,
                retry_policy=SEND_RETRY,
            )
            sent += result.status == "sent"
        return sent


async def bare_worker(address: str, task_queue: str) -> int:
    # By module name: the sandbox cannot re-import classes defined in __main__.
    from bench.journeys import BareJourney, noop_send

    client = await connect(Settings(temporal_address=address))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BareJourney],
        activities=[noop_send],
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        # The same poller settings as worker.py, so the baseline is tuned as well as Nudge.
        max_concurrent_workflow_task_polls=20,
        nonsticky_to_sticky_poll_ratio=1.0,
    ):
        print(f"bare worker polling task queue {task_queue!r}", flush=True)
        await stop.wait()
    return 0


# ---- the driver ------------------------------------------------------------------------------


# Plain classes, not dataclasses: the sandbox re-executes this module for every bare journey,
# and each dataclass costs more to create than the bare workflow's own definition.
class Config:
    def __init__(
        self,
        *,
        journeys: int = 200,
        scale: float = 36000.0,
        concurrency: int = 16,
        start: str = "api",
        histories: int = 20,
        timeout: float = 600.0,
        keep: Path | None = None,
        profile: Path | None = None,
        bytecode_cache: bool = True,
        backlog: bool = False,
    ) -> None:
        self.journeys, self.scale, self.concurrency = journeys, scale, concurrency
        self.start, self.histories, self.timeout = start, histories, timeout
        self.keep, self.profile, self.bytecode_cache = keep, profile, bytecode_cache
        self.backlog = backlog

    @property
    def timer_seconds(self) -> float:
        return TIMER_TOTAL.total_seconds() / self.scale


class Phase:
    def __init__(self, name: str, started_via: str, journeys: int) -> None:
        self.name, self.started_via, self.journeys = name, started_via, journeys
        self.completed = 0
        self.start_seconds = float("nan")
        self.wall_seconds = float("nan")
        self.start_latencies: list[float] = []
        self.emails: int | None = None
        self.messages_sent: int | None = None
        self.history: Counter[str] = Counter()
        self.history_bytes = 0
        self.sampled = 0
        self.steps: dict[str, list[float]] = {key: [] for _, key in STEPS}

    @property
    def per_second(self) -> float:
        return self.completed / self.wall_seconds if self.completed else 0.0

    def per_journey(self, event: str) -> float:
        return self.history[event] / self.sampled if self.sampled else float("nan")


def _event_name(kind: int) -> str:
    name = EventType.Name(kind).removeprefix("EVENT_TYPE_")  # type: ignore[arg-type]
    return "".join(part.capitalize() for part in name.split("_"))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _sample(ids: Sequence[str], k: int) -> list[str]:
    if k <= 0 or not ids:
        return []
    step = max(1, len(ids) // k)
    return list(ids[::step][:k])


STEPS = (
    ("workflow task: queued (scheduled -> started)", "wft_queue"),
    ("workflow task: on the worker (started -> completed)", "wft_run"),
    ("activity: queued (scheduled -> started)", "act_queue"),
    ("activity: running (started -> completed)", "act_run"),
    ("timer: late (fired - started - timeout)", "timer_lag"),
)


async def count_histories(client: Client, ids: Sequence[str], phase: Phase) -> None:
    """Event counts, sizes, and the time each step took, from the sampled journeys' histories."""
    for wid in ids:
        history = await client.get_workflow_handle(wid).fetch_history()
        phase.history.update(_event_name(e.event_type) for e in history.events)
        phase.history_bytes += sum(e.ByteSize() for e in history.events)
        phase.sampled += 1
        at = {e.event_id: e.event_time.ToMicroseconds() / 1e6 for e in history.events}
        timeouts: dict[int, float] = {}
        for e in history.events:
            name, now = _event_name(e.event_type), at[e.event_id]
            if name == "WorkflowTaskStarted":
                since = e.workflow_task_started_event_attributes.scheduled_event_id
                phase.steps["wft_queue"].append(now - at[since])
            elif name == "WorkflowTaskCompleted":
                since = e.workflow_task_completed_event_attributes.started_event_id
                phase.steps["wft_run"].append(now - at[since])
            elif name == "ActivityTaskStarted":
                since = e.activity_task_started_event_attributes.scheduled_event_id
                phase.steps["act_queue"].append(now - at[since])
            elif name == "ActivityTaskCompleted":
                since = e.activity_task_completed_event_attributes.started_event_id
                phase.steps["act_run"].append(now - at[since])
            elif name == "TimerStarted":
                timeout = e.timer_started_event_attributes.start_to_fire_timeout
                timeouts[e.event_id] = timeout.ToMicroseconds() / 1e6
            elif name == "TimerFired":
                since = e.timer_fired_event_attributes.started_event_id
                phase.steps["timer_lag"].append(now - at[since] - timeouts.get(since, 0.0))


async def _finish(
    bench: harness.Bench,
    phase: Phase,
    query: str,
    t0: float,
    within: float,
    watch: Sequence[harness.Child],
) -> None:
    def alive() -> None:
        for child in watch:
            child.check_alive()

    phase.completed = await harness.wait_for_count(
        bench.client,
        f'{query} AND ExecutionStatus="Completed"',
        phase.journeys,
        within,
        also=alive,
    )
    broken = (
        await bench.client.count_workflows(
            f'{query} AND ExecutionStatus!="Completed" AND ExecutionStatus!="Running"'
        )
    ).count
    if broken:
        harness.say(f"WARNING: {broken} {phase.name} journeys closed other than Completed")
    if phase.completed < phase.journeys:
        harness.say(
            f"WARNING: only {phase.completed}/{phase.journeys} {phase.name} journeys completed "
            f"within {within:g} s"
        )
    closed = await harness.close_times(bench.client, f'{query} AND ExecutionStatus="Completed"')
    if closed:
        phase.wall_seconds = max(c.timestamp() for c in closed) - t0


async def run_bare(bench: harness.Bench, config: Config) -> Phase:
    n, run = config.journeys, bench.run_id
    phase = Phase("bare", "client signal-with-start", n)

    async def start_worker() -> harness.Child:
        argv = [harness.PYTHON, "-m", "bench.journeys", "--bare-worker"]
        argv += ["--address", bench.temporal_address, "--task-queue", BARE_QUEUE]
        worker = bench.spawn("bare-worker", argv)
        await worker.wait_for_line("bare worker polling")
        bench.profile(worker)
        return worker

    now = datetime.now(UTC)
    work = [
        (
            f"bare-{run}-{i}",
            JourneyInput(
                flow="bare",
                contact_id=i,
                key=f"{run}-c{i}",
                trigger_event_id=f"{run}-evt-{i}",
                time_scale=config.scale,
            ),
            JourneyEvent(
                id=f"{run}-evt-{i}",
                type="cart_updated",
                occurred_at=now,
                cart_token=f"{run}-c{i}",
                line_count=1,
            ),
        )
        for i in range(n)
    ]

    async def start(i: int) -> None:
        wid, journey, event = work[i]
        began = harness.clock()
        await bench.client.start_workflow(
            BARE_TYPE,
            journey,
            id=wid,
            task_queue=BARE_QUEUE,
            start_signal="event",
            start_signal_args=[event],
        )
        phase.start_latencies.append(harness.clock() - began)

    worker = None if config.backlog else await start_worker()
    harness.say(f"[bare] starting {n} journeys (concurrency {config.concurrency})")
    cpu = bench.cpu()
    t0, began = time.time(), harness.clock()
    await harness.pool(n, config.concurrency, start)
    phase.start_seconds = harness.clock() - began
    harness.say(f"[bare] started in {phase.start_seconds:.2f} s")
    if worker is None:
        harness.say("[bare] starting the worker")
        worker = await start_worker()
        cpu, t0 = bench.cpu(), time.time()
    harness.say("[bare] waiting for the journeys to complete")
    await _finish(bench, phase, f'WorkflowType="{BARE_TYPE}"', t0, config.timeout, [worker])
    bench.print_cpu("[bare]", cpu, bench.cpu())
    bench.stop(worker)
    await count_histories(bench.client, _sample([w for w, _, _ in work], config.histories), phase)
    return phase


async def run_nudge(bench: harness.Bench, config: Config) -> Phase:
    n, run = config.journeys, bench.run_id
    database = await bench.database()
    sink = await bench.mail_sink()
    watch = [sink.child]

    async def start_worker() -> harness.Child:
        worker = await bench.worker(NUDGE_QUEUE, config.scale, sink)
        bench.profile(worker)
        watch.append(worker)
        return worker

    worker = None if config.backlog else await start_worker()
    bodies = [harness.cart_event(i, run) for i in range(n)]
    ids: list[str] = [""] * n
    latencies: list[float] = []
    closing: list[Callable[[], Awaitable[None]]] = []

    if config.start == "api":
        api, url = await bench.api(NUDGE_QUEUE, config.scale)
        bench.profile(api)
        watch.append(api)
        phase = Phase("nudge", "POST /v1/events (API process)", n)
        encoded = [json.dumps(body).encode() for body in bodies]
        limits = httpx.Limits(
            max_connections=config.concurrency, max_keepalive_connections=config.concurrency
        )
        http = httpx.AsyncClient(
            base_url=url,
            headers={
                "Authorization": f"Bearer {harness.API_KEY}",
                "Content-Type": "application/json",
            },
            limits=limits,
            timeout=120,
        )
        closing.append(http.aclose)

        async def start(i: int) -> None:
            began = harness.clock()
            response = await http.post("/v1/events", content=encoded[i])
            latencies.append(harness.clock() - began)
            if response.status_code != 202:
                raise harness.BenchError(
                    f"the API answered {response.status_code}: {response.text}"
                )
            ids[i] = response.json()["results"][0]["journeys"][0]

    else:
        from nudge.events import schemas as ev
        from nudge.journeys.routing import EventRouter
        from nudge.settings import Settings
        from nudge.storage.db import create_engine, session_maker
        from workflows import FLOWS

        phase = Phase("nudge", "EventRouter in the bench process (no HTTP)", n)
        settings = Settings(
            database_url=database,
            temporal_address=bench.temporal_address,
            task_queue=NUDGE_QUEUE,
            time_scale=config.scale,
            api_key=harness.API_KEY,
        )
        engine = create_engine(database)
        closing.append(engine.dispose)
        ingestor = EventRouter(session_maker(engine), bench.client, settings, FLOWS)
        parsed = [(ev.event_adapter.validate_python(body), body) for body in bodies]

        async def start(i: int) -> None:
            began = harness.clock()
            result = await ingestor.ingest([parsed[i]])
            latencies.append(harness.clock() - began)
            ids[i] = result.results[0].journeys[0]

    phase.start_latencies = latencies
    harness.say(f"[nudge] starting {n} journeys via {phase.started_via}")
    cpu = bench.cpu()
    t0, began = time.time(), harness.clock()
    try:
        await harness.pool(n, config.concurrency, start)
    finally:
        for close in closing:
            await close()
    phase.start_seconds = harness.clock() - began
    harness.say(f"[nudge] started in {phase.start_seconds:.2f} s")
    if worker is None:
        harness.say("[nudge] starting the worker")
        worker = await start_worker()
        cpu, t0 = bench.cpu(), time.time()
    harness.say("[nudge] waiting for the journeys to complete")
    await _finish(bench, phase, f'NudgeFlow="{NUDGE_FLOW}"', t0, config.timeout, watch)
    expected = n * EMAILS_PER_JOURNEY
    deadline = harness.clock() + 30
    phase.emails = await sink.count()
    while phase.emails < expected and harness.clock() < deadline:
        await asyncio.sleep(0.5)
        phase.emails = await sink.count()
    bench.print_cpu("[nudge]", cpu, bench.cpu())
    for child in reversed(watch):
        bench.stop(child)
    phase.messages_sent = await _sent_messages(database)
    await count_histories(bench.client, _sample(ids, config.histories), phase)
    return phase


async def _sent_messages(database: str) -> int:
    from nudge.storage.db import create_engine
    from nudge.storage.models import Message, MessageStatus

    engine = create_engine(database)
    try:
        async with engine.connect() as connection:
            query = select(func.count()).select_from(Message)
            count = await connection.scalar(query.where(Message.status == MessageStatus.SENT))
            return int(count or 0)
    finally:
        await engine.dispose()


def report(config: Config, bare: Phase, nudge: Phase) -> None:
    floor = config.timer_seconds
    emails_per_journey = (nudge.emails or 0) / nudge.completed if nudge.completed else float("nan")

    for phase in (bare, nudge):
        phase.history["*"] = sum(v for k, v in phase.history.items() if k != "*")

    def both(f: Any) -> list[object]:
        return [f(bare), f(nudge)]

    rows: list[list[object]] = [
        ["started via", bare.started_via, nudge.started_via],
        ["journeys completed", *both(lambda p: f"{p.completed}/{p.journeys}")],
        ["start phase (s)", *both(lambda p: p.start_seconds)],
        [
            "start latency p50 (ms)",
            *both(lambda p: harness.ms(harness.percentile(p.start_latencies, 50))),
        ],
        [
            "start latency p99 (ms)",
            *both(lambda p: harness.ms(harness.percentile(p.start_latencies, 99))),
        ],
        [
            "wall: worker ready -> last close (s)"
            if config.backlog
            else "wall: first start -> last close (s)",
            *both(lambda p: p.wall_seconds),
        ],
        ["  of which timers (s)", floor, floor],
        ["  over the timers (s)", *both(lambda p: p.wall_seconds - floor)],
        ["journeys/s", *both(lambda p: p.per_second)],
        ["emails at the SMTP sink", "-", nudge.emails],
        ["messages `sent` in the log", "-", nudge.messages_sent],
        [f"history events / journey (sample {bare.sampled})", *both(lambda p: p.per_journey("*"))],
        [
            "history bytes / journey",
            *both(lambda p: p.history_bytes / p.sampled if p.sampled else 0),
        ],
        ["workflow tasks / journey", *both(lambda p: p.per_journey("WorkflowTaskCompleted"))],
        ["activities / journey", *both(lambda p: p.per_journey("ActivityTaskScheduled"))],
        [
            "activities / email",
            bare.per_journey("ActivityTaskScheduled") / EMAILS_PER_JOURNEY,
            nudge.per_journey("ActivityTaskScheduled") / emails_per_journey
            if emails_per_journey
            else float("nan"),
        ],
    ]
    harness.print_table(
        f"journeys: {config.journeys} per side, time scale {config.scale:g} "
        f"(timers {floor:.1f} s per journey), start concurrency {config.concurrency}",
        ["", "bare", "nudge"],
        rows,
    )
    kinds = sorted((set(bare.history) | set(nudge.history)) - {"*"})
    harness.print_table(
        "history events per journey, by type",
        ["event type", "bare", "nudge"],
        [[kind, bare.per_journey(kind), nudge.per_journey(kind)] for kind in kinds],
    )
    harness.print_table(
        f"where a journey's time goes, from the sampled histories (mean / p99 ms; "
        f"{bare.sampled} journeys per side)",
        ["step", "bare mean", "bare p99", "nudge mean", "nudge p99"],
        [
            [
                label,
                *(
                    harness.ms(f(p.steps[key]))
                    for p in (bare, nudge)
                    for f in (_mean, lambda v: harness.percentile(v, 99))
                ),
            ]
            for label, key in STEPS
        ],
    )
    value = harness.ratio(nudge.per_second, bare.per_second)
    excess = harness.ratio(bare.wall_seconds - floor, nudge.wall_seconds - floor)
    verdict = "meets" if value >= 0.8 else "BELOW"
    harness.say(
        f"RATIO nudge/bare journeys/s = {value:.2f} ({verdict} the 0.8 target); "
        f"time over the timers, bare/nudge = {excess:.2f}"
    )
    if nudge.emails is not None and nudge.emails != nudge.journeys * EMAILS_PER_JOURNEY:
        harness.say(
            f"WARNING: {nudge.emails} emails, expected {nudge.journeys * EMAILS_PER_JOURNEY}"
        )


async def benchmark(config: Config) -> int:
    harness.say(
        f"bench.journeys: {config.journeys} journeys per side, scale {config.scale:g}, "
        f"nudge started via {config.start}, "
        + ("backlog (workers start after every journey)" if config.backlog else "live workers")
    )
    harness.print_machine([harness.bytecode_note(config.bytecode_cache)])
    async with harness.Bench(
        "journeys", keep=config.keep, profile=config.profile, bytecode_cache=config.bytecode_cache
    ) as bench:
        bare = await run_bare(bench, config)
        nudge = await run_nudge(bench, config)
    report(config, bare, nudge)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    defaults = Config()
    parser.add_argument("--journeys", type=int, default=defaults.journeys, help="N per side")
    parser.add_argument(
        "--scale", type=float, default=defaults.scale, help="flow delays are divided by this"
    )
    parser.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="starts in flight"
    )
    parser.add_argument(
        "--start",
        choices=("api", "ingestor"),
        default=defaults.start,
        help="start Nudge journeys through the API process or the EventRouter in this process",
    )
    parser.add_argument(
        "--histories", type=int, default=defaults.histories, help="histories sampled per side"
    )
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument("--keep", type=Path, help="keep logs and databases in this folder")
    parser.add_argument("--profile", type=Path, help="py-spy the workers and API into this folder")
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="start every journey before the worker runs, and time the workers alone "
        "(worker ready -> last close): journey execution without ingest",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="children inherit PYTHONDONTWRITEBYTECODE (default: they cache .pyc in the temp dir)",
    )
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--task-queue", default=BARE_QUEUE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_worker:
        return asyncio.run(bare_worker(args.address, args.task_queue))
    config = Config(
        journeys=args.journeys,
        scale=args.scale,
        concurrency=args.concurrency,
        start=args.start,
        histories=args.histories,
        timeout=args.timeout,
        keep=args.keep,
        profile=args.profile,
        bytecode_cache=not args.no_bytecode_cache,
        backlog=args.backlog,
    )
    return harness.run(lambda: benchmark(config))


if __name__ == "__main__":
    sys.exit(main())
