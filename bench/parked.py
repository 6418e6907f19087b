"""Parked journeys: what journeys waiting on a long timer cost the worker and the server.

    python -m bench.parked [--journeys 2000] [--concurrency 64] [--settle 15]

Starts `--journeys` cart_abandonment journeys the way the API does (signal-with-start, search
attributes, summary; `time_scale=1`, so each one parks on its 2-hour timer and no email is due
within the run) against the Temporal dev server with SQLite persistence, worked by `worker.py`
in a process of its own. Samples, every `--sample` seconds, the worker's and the server's RSS
and how many journeys are started and parked (a journey parks when its first workflow task
starts its timer: counted by the server's `command{commandType="StartTimer"}` metric); measures
the server's SQLite files (database + WAL) before and after.

Baseline, measured in the same run the same way: as many bare workflows that only sleep 2 hours
(`Sleeper`, below), started plainly, on a fresh dev server, with a worker process of their own
with the same workflow cache (`worker.MAX_CACHED_WORKFLOWS`). Each kind gets its own server and
database, so each footprint is its own. Figures are printed with ratios (nudge / bare), never
verdicts: the worker's RSS is flat if it stops growing once the cache is full.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio import workflow

# This module is also the bare worker's workflow module. That worker passes it through the
# sandbox (see `bare_worker`); should it not, everything but the workflow is passed through.
with workflow.unsafe.imports_passed_through():
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    from nudge.dev.temporal_dev import extra_args, temporal_binary
    from nudge.journeys.connection import connect
    from nudge.journeys.contracts import JourneyEvent, JourneyInput, workflow_id
    from nudge.journeys.search_attributes import start_search_attributes
    from nudge.settings import ROOT, Settings
    from nudge.storage.db import migrate
    from worker import MAX_CACHED_WORKFLOWS

FLOW = "cart_abandonment"
PARK_HOURS = 2.0  # cart_abandonment's first wait
READY_TIMEOUT = 120.0
STALL = 120.0  # give up waiting for the worker after this long without progress
MB = 1024 * 1024


@workflow.defn(name="bench_parked_sleeper")
class Sleeper:
    """The baseline: a workflow that does nothing but wait on one timer."""

    @workflow.run
    async def run(self, hours: float) -> None:
        await workflow.sleep(timedelta(hours=hours))


# ---- measuring processes and files -------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pid(name: str) -> int:
    """The pid of this process's child called `name` (the dev server start_local spawned)."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
        if ppid == me and comm == name:
            return int(proc.name)
    raise RuntimeError(f"no child process named {name!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timers_started(metrics_url: str, namespace: str) -> int:
    """Timers the server has started in `namespace`, from its Prometheus metrics."""
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("command{")
            and 'commandType="StartTimer"' in line
            and f'namespace="{namespace}"' in line
            and 'service_name="history"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def db_bytes(db_file: Path) -> tuple[int, int]:
    """Sizes of the SQLite database file and its write-ahead log."""
    wal = db_file.with_name(db_file.name + "-wal")
    return (
        db_file.stat().st_size if db_file.exists() else 0,
        wal.stat().st_size if wal.exists() else 0,
    )


# ---- one measured run: a fresh server, a worker process, N starts -------------------------------


@dataclass
class Sample:
    at: float
    started: int
    parked: int  # timers started: journeys whose first workflow task the worker has done
    worker_rss: int
    server_rss: int


@dataclass
class Run:
    kind: str
    journeys: int
    start_seconds: float = 0.0
    parked_seconds: float = 0.0  # from the first start until the worker had taken every task
    parked: bool = False
    worker_idle: int = 0
    worker_settled: int = 0
    worker_cpu: float = 0.0  # CPU seconds from the first start until all parked
    server_cpu: float = 0.0
    server_before: int = 0
    server_after: int = 0
    db_before: tuple[int, int] = (0, 0)
    db_after: tuple[int, int] = (0, 0)
    samples: list[Sample] = field(default_factory=list)

    @property
    def starts_per_s(self) -> float:
        return self.journeys / self.start_seconds if self.start_seconds else 0.0

    @property
    def parks_per_s(self) -> float:
        return self.journeys / self.parked_seconds if self.parked_seconds else 0.0

    @property
    def worker_max(self) -> int:
        return max(s.worker_rss for s in self.samples)

    @property
    def server_per_journey(self) -> float:
        return (self.server_after - self.server_before) / self.journeys

    @property
    def db_per_journey(self) -> float:
        return (sum(self.db_after) - sum(self.db_before)) / self.journeys

    def worker_when(self, fraction: float, of: str) -> int:
        """Worker RSS at the first sample with `fraction` of the journeys started or parked."""
        for s in self.samples:
            if (s.started if of == "started" else s.parked) >= fraction * self.journeys:
                return s.worker_rss
        return self.samples[-1].worker_rss


def worker_command(kind: str, address: str, task_queue: str) -> list[str]:
    if kind == "nudge":
        return [sys.executable, str(ROOT / "worker.py")]
    return [sys.executable, "-m", "bench.parked", "--bare-worker", address, task_queue]


def spawn_worker(
    kind: str, address: str, task_queue: str, database_url: str, log_path: Path
) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "NUDGE_TEMPORAL_ADDRESS": address,
        "NUDGE_TASK_QUEUE": task_queue,
        "NUDGE_DATABASE_URL": database_url,
        "NUDGE_ENV": "development",  # the harness's keys are not secrets
        # No email is due within the run; nothing listens here, so none could go out.
        "NUDGE_SMTP_HOST": "127.0.0.1",
        "NUDGE_SMTP_PORT": "9",
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            worker_command(kind, address, task_queue),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def journey_id(kind: str, i: int) -> str:
    return workflow_id(FLOW, i + 1, f"bench-cart-{i}") if kind == "nudge" else f"sleeper-{i}"


class Measurement:
    def __init__(
        self, run: Run, client: Client, task_queue: str, worker: int, server: int, metrics: str
    ) -> None:
        self.run, self.client, self.task_queue = run, client, task_queue
        self.worker, self.server, self.metrics = worker, server, metrics
        self.started = 0
        self.parked = 0
        self.timers_before = 0  # the server's own workflows start timers too

    async def pollers(self) -> int:
        response = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.client.namespace,
                task_queue=TaskQueue(name=self.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        return len(response.pollers)

    async def sample(self) -> None:
        started = self.started
        timers = await asyncio.to_thread(timers_started, self.metrics, self.client.namespace)
        self.parked = timers - self.timers_before
        self.run.samples.append(
            Sample(
                at=time.monotonic(),
                started=started,
                parked=self.parked,
                worker_rss=rss_bytes(self.worker),
                server_rss=rss_bytes(self.server),
            )
        )

    async def sampling(self, every: float, report_every: float = 30.0) -> None:
        reported = time.monotonic()
        while True:
            await self.sample()
            if time.monotonic() - reported >= report_every:
                reported, s = time.monotonic(), self.run.samples[-1]
                print(
                    f"  {self.run.kind}: {s.at - self.run.samples[0].at:.0f} s, "
                    f"{s.started:,} started, {s.parked:,} parked, "
                    f"worker {s.worker_rss / MB:.0f} MB",
                    flush=True,
                )
            await asyncio.sleep(every)

    async def start_all(self, concurrency: int) -> None:
        """Start every journey, at most `concurrency` at a time."""
        now = datetime.now(UTC)
        pending = iter(range(self.run.journeys))

        async def starter() -> None:
            for i in pending:
                await self.start(i, now)
                self.started += 1

        begin = time.monotonic()
        await asyncio.gather(*(starter() for _ in range(concurrency)))
        self.run.start_seconds = time.monotonic() - begin

    async def start(self, i: int, now: datetime) -> None:
        if self.run.kind == "bare":
            await self.client.start_workflow(
                Sleeper.run, PARK_HOURS, id=journey_id("bare", i), task_queue=self.task_queue
            )
            return
        # As nudge/journeys/routing.py starts the journey of a cart_updated event.
        contact_id, key = i + 1, f"bench-cart-{i}"
        await self.client.start_workflow(
            FLOW,
            JourneyInput(
                flow=FLOW,
                contact_id=contact_id,
                key=key,
                trigger_event_id=f"bench-evt-{i}",
                time_scale=1.0,
            ),
            id=journey_id("nudge", i),
            task_queue=self.task_queue,
            start_signal="event",
            start_signal_args=[
                JourneyEvent(
                    id=f"bench-evt-{i}",
                    type="cart_updated",
                    occurred_at=now,
                    cart_token=key,
                    line_count=2,
                )
            ],
            search_attributes=start_search_attributes(FLOW, contact_id),
            static_summary=f"{FLOW} · contact {contact_id} · {key}",
        )

    async def wait_parked(self) -> bool:
        """Wait until every journey is on its timer; give up after `STALL` seconds without
        progress (the count is the sampler's, so as fine-grained as `--sample`)."""
        progress, last = time.monotonic(), self.parked
        while self.parked < self.run.journeys:
            await asyncio.sleep(0.1)
            if self.parked > last:
                progress, last = time.monotonic(), self.parked
            elif time.monotonic() - progress > STALL:
                print(f"  (no progress for {STALL:.0f} s: {self.parked:,} parked)", flush=True)
                return False
        return True

    async def any_pending_task(self) -> bool:
        """A cross-check of the count: whether one of the last-started has a task left."""
        n = self.run.journeys
        for i in range(max(n - 10, 0), n):
            handle = self.client.get_workflow_handle(journey_id(self.run.kind, i))
            if (await handle.describe()).raw_description.HasField("pending_workflow_task"):
                return True
        return False


async def measure(kind: str, args: argparse.Namespace, tmp: Path) -> Run:
    run = Run(kind=kind, journeys=args.journeys)
    db_file = tmp / f"{kind}-temporal.db"
    database_url = f"sqlite+aiosqlite:///{tmp / f'{kind}-nudge.db'}"
    await asyncio.to_thread(migrate, database_url)
    metrics_port = free_port()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_database_filename=str(db_file),
        dev_server_extra_args=[*extra_args(db_file), "--metrics-port", str(metrics_port)],
        data_converter=pydantic_data_converter,
    )
    client = env.client
    address = client.service_client.config.target_host
    task_queue = f"bench-parked-{kind}-{uuid.uuid4().hex[:8]}"
    log_path = tmp / f"{kind}-worker.log"
    process = spawn_worker(kind, address, task_queue, database_url, log_path)
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    m = Measurement(run, client, task_queue, process.pid, child_pid("temporal"), metrics)
    sampling: asyncio.Task[None] | None = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while await m.pollers() == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} worker not polling:\n{log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # let the worker finish starting up
        run.worker_idle = rss_bytes(m.worker)
        run.server_before = rss_bytes(m.server)
        run.db_before = db_bytes(db_file)
        cpu = cpu_seconds(m.worker), cpu_seconds(m.server)
        m.timers_before = await asyncio.to_thread(timers_started, metrics, client.namespace)
        sampling = asyncio.create_task(m.sampling(args.sample))
        await m.start_all(args.concurrency)
        run.parked = await m.wait_parked()
        run.parked_seconds = time.monotonic() - run.samples[0].at
        run.worker_cpu = cpu_seconds(m.worker) - cpu[0]
        run.server_cpu = cpu_seconds(m.server) - cpu[1]
        if run.parked:
            run.parked = not await m.any_pending_task()
        await asyncio.sleep(args.settle)
        sampling.cancel()
        await m.sample()
        run.worker_settled = rss_bytes(m.worker)
        run.server_after = rss_bytes(m.server)
        run.db_after = db_bytes(db_file)
    finally:
        if sampling is not None:
            sampling.cancel()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        await env.shutdown()
    return run


# ---- report ----------------------------------------------------------------------------------


def report(bare: Run, nudge: Run, args: argparse.Namespace) -> None:
    n = args.journeys
    print(
        f"\nparked journeys: {n:,} of each kind, {args.concurrency} starts in flight, "
        f"worker max_cached_workflows={MAX_CACHED_WORKFLOWS:,}, settle {args.settle:.0f} s; "
        f"{os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.2f} "
        "(rates share the CPUs with everything else running; CPU time per journey less so)"
    )
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, b: float, x: float, fmt: str) -> None:
        rows.append((label, fmt.format(b), fmt.format(x), f"{x / b:.2f}x" if b else ""))

    row("starts/s", bare.starts_per_s, nudge.starts_per_s, "{:,.0f}")
    row("parked/s (first start to all parked)", bare.parks_per_s, nudge.parks_per_s, "{:,.0f}")
    row(
        "worker CPU per journey (ms)",
        bare.worker_cpu / n * 1000,
        nudge.worker_cpu / n * 1000,
        "{:,.2f}",
    )
    row(
        "server CPU per journey (ms)",
        bare.server_cpu / n * 1000,
        nudge.server_cpu / n * 1000,
        "{:,.2f}",
    )
    row("worker RSS idle (MB)", bare.worker_idle / MB, nudge.worker_idle / MB, "{:,.1f}")
    for of in ("started", "parked"):
        for p in (10, 50, 100):
            row(
                f"worker RSS at {p}% {of} (MB)",
                bare.worker_when(p / 100, of) / MB,
                nudge.worker_when(p / 100, of) / MB,
                "{:,.1f}",
            )
    row(
        f"worker RSS settled, +{args.settle:.0f} s (MB)",
        bare.worker_settled / MB,
        nudge.worker_settled / MB,
        "{:,.1f}",
    )
    row("worker RSS max sampled (MB)", bare.worker_max / MB, nudge.worker_max / MB, "{:,.1f}")
    cached = min(n, MAX_CACHED_WORKFLOWS)
    row(
        f"worker RSS max-idle per cached ({cached:,}) KB",
        (bare.worker_max - bare.worker_idle) / cached / 1024,
        (nudge.worker_max - nudge.worker_idle) / cached / 1024,
        "{:,.1f}",
    )
    row("server RSS before (MB)", bare.server_before / MB, nudge.server_before / MB, "{:,.1f}")
    row("server RSS after (MB)", bare.server_after / MB, nudge.server_after / MB, "{:,.1f}")
    row(
        "server RSS delta per journey (KB)",
        bare.server_per_journey / 1024,
        nudge.server_per_journey / 1024,
        "{:,.2f}",
    )
    row("server DB file after (MB)", bare.db_after[0] / MB, nudge.db_after[0] / MB, "{:,.1f}")
    row("server DB WAL after (MB)", bare.db_after[1] / MB, nudge.db_after[1] / MB, "{:,.1f}")
    row(
        "server DB bytes per journey (db+wal)", bare.db_per_journey, nudge.db_per_journey, "{:,.0f}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'bare sleeper':>12}  {'nudge cart':>12}  {'ratio':>6}")
    for label, b, x, ratio in rows:
        print(f"{label:<{width}}  {b:>12}  {x:>12}  {ratio:>6}")
    for run in (bare, nudge):
        if not run.parked:
            print(f"NOTE: not every {run.kind} journey had parked when measured")
    for run in (bare, nudge):
        print_timeline(run)


def print_timeline(run: Run) -> None:
    """Worker RSS over time, and its growth once the cache was full."""
    samples = run.samples
    step = max(1, len(samples) // 12)
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    begin = samples[0].at
    print(f"\n{run.kind} worker: seconds, started, parked -> worker RSS MB, server RSS MB")
    for s in shown:
        print(
            f"  {s.at - begin:7.1f} s  {s.started:>8,}  {s.parked:>8,}  ->"
            f"  {s.worker_rss / MB:7.1f}  {s.server_rss / MB:8.1f}"
        )
    # Flat means: no growth once the cache has been full for a while (the first evictions
    # still grow the heap), so measure from twice the cache size where the run gets there.
    cache = MAX_CACHED_WORKFLOWS
    ref = next((s for s in samples if s.parked >= 2 * cache), None) or next(
        (s for s in samples if s.parked > cache), None
    )
    if ref is None:
        print(
            f"  {run.journeys:,} journeys <= the cache ({cache:,}): all stay cached; "
            "the RSS can only level off above the cache size"
        )
        return
    after = max(s.worker_rss for s in samples if s.at >= ref.at)
    print(
        f"  from {ref.parked:,} parked ({ref.parked / cache:.1f}x the cache, "
        f"{ref.worker_rss / MB:.1f} MB) to {run.journeys:,}: max {after / MB:.1f} MB "
        f"({(after - ref.worker_rss) / MB:+.1f}), settled {run.worker_settled / MB:.1f} MB "
        f"({(run.worker_settled - ref.worker_rss) / MB:+.1f})"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="nudge-parked-") as tmp:
        runs: dict[str, Run] = {}
        for kind in ("bare", "nudge"):
            print(f"{kind}: starting {args.journeys:,} workflows ...", flush=True)
            r = runs[kind] = await measure(kind, args, Path(tmp))
            print(
                f"{kind}: {r.starts_per_s:,.0f} starts/s, all parked after "
                f"{r.parked_seconds:.1f} s",
                flush=True,
            )
        report(runs["bare"], runs["nudge"], args)


async def bare_worker(address: str, task_queue: str) -> None:
    """The baseline's worker process: only `Sleeper`, with the Nudge worker's cache size.

    This module is passed through the sandbox rather than imported anew for every workflow
    run (what the sandbox does with `workflows/`): a baseline as small as a sandboxed workflow
    gets, not one inflated by this module's benchmark code."""
    # Run as `python -m bench.parked`, this module is `__main__`: take the workflow from the
    # module of its real name, the one the sandbox passes through.
    from bench.parked import Sleeper as BareSleeper

    client = await connect(Settings(temporal_address=address))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BareSleeper],
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        # The same poller settings as worker.py, so the baseline is tuned as well as Nudge.
        max_concurrent_workflow_task_polls=20,
        nonsticky_to_sticky_poll_ratio=1.0,
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("bench")
        ),
    ):
        print(f"bare worker polling task queue {task_queue!r}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--journeys", type=int, default=2000, help="journeys of each kind")
    parser.add_argument("--concurrency", type=int, default=64, help="starts in flight")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds measured after")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--bare-worker", nargs=2, metavar=("ADDRESS", "TASK_QUEUE"))
    args = parser.parse_args(argv)
    if args.bare_worker:
        asyncio.run(bare_worker(*args.bare_worker))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
