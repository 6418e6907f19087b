"""What every benchmark shares: the dev server, child processes, timing, tables, machine info.

A `Bench` owns one run: a temp dir, the Temporal dev server on a SQLite file with the same
pragmas as `make run` (`nudge.temporal_dev`), a migrated Nudge database, and child processes —
the mail catcher, workers, the API — each a separate Python process with its own GIL and its
own log file. Everything is stopped and removed on exit, on an error and on Ctrl-C; children
also get SIGTERM from the kernel if this process dies without cleaning up.

Benchmarks print figures, never assert on them: a figure means something only next to the
baseline measured in the same run, on the same server, on the same machine.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nudge.dev.temporal_dev import extra_args, temporal_binary
from nudge.storage.db import migrate_async

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
API_KEY = "bench-key"
FROM_EMAIL = "Bench Store <store@bench.example>"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1

# Every child still running when the interpreter exits is killed (the backstop for a crash
# between start and the `finally` that would have stopped it).
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live):
        if process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
    _live.clear()


try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)  # loaded before any fork
except OSError:
    _libc = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM when the benchmark process dies.
    if _libc is not None and sys.platform == "linux":
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# ---- timing and statistics ---------------------------------------------------------------


def clock() -> float:
    """Monotonic seconds for measuring intervals (perf_counter)."""
    return time.perf_counter()


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- store events ----------------------------------------------------------------------------


def cart_event(i: int, run: str) -> dict[str, Any]:
    """A `cart_updated` of a new cart (token) of a new contact: each one starts a journey."""
    token = f"{run}-c{i}"
    return {
        "id": f"{run}-evt-{i}",
        "type": "cart_updated",
        "occurred_at": "2026-11-23T10:00:00Z",
        "contact": {
            "email": f"shopper{i}.{run}@example.com",
            "first_name": "Ana",
            "timezone": "Europe/Lisbon",
        },
        "cart": {
            "token": token,
            "currency": "EUR",
            "checkout_url": f"https://shop.example/checkout/{token}",
            "lines": [
                {
                    "product_id": f"p{i % 7}",
                    "title": "Linen shirt",
                    "price": "49.00",
                    "quantity": 1,
                    "image_url": f"https://shop.example/img/p{i % 7}.jpg",
                    "url": f"https://shop.example/p/p{i % 7}",
                }
            ],
        },
    }


# ---- output --------------------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain aligned text: the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    return "\n".join([title, rule, line(cells[0]), rule, *map(line, cells[1:]), rule])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(table(title, header, rows), flush=True)
    print(flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def machine_info() -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                memory = f"{int(text.split()[1]) / 1024 / 1024:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        cli = subprocess.run(
            [temporal_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, RuntimeError, subprocess.SubprocessError):
        cli = "?"
    return [
        ("code", _code_version()),
        ("cpu", cpu),
        ("cores", f"{os.cpu_count()} ({usable} usable)"),
        ("load average", " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"),
        ("memory", memory),
        ("os", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        ("temporalio", metadata.version("temporalio")),
        ("temporal cli", cli),
    ]


def _code_version() -> str:
    """The commit measured, and how many files differ from it (others edit concurrently)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except OSError:
        commit, changed = "", []
    if not commit:
        return f"{ROOT} (not a git checkout)"
    return commit + (f" + {len(changed)} modified file(s)" if changed else "")


def bytecode_note(cache: bool) -> tuple[str, str]:
    inherited = "PYTHONDONTWRITEBYTECODE=1" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    return ("child .pyc", "on (cache in the temp dir)" if cache else f"as inherited ({inherited})")


def print_machine(extra: Sequence[tuple[str, str]] = ()) -> None:
    rows = [*machine_info(), *extra]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}", flush=True)
    print(flush=True)


# ---- processes -----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads, by kind: the main thread (the asyncio loop), the
    SDK's workflow thread, the Rust core's tokio threads and the other Python threads
    (aiosqlite connections, executors)."""
    kinds: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kinds
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        if int(task.name) == pid:
            kind = "main thread (event loop)"
        elif comm.startswith("tokio"):
            kind = "tokio threads (SDK core, Rust)"
        elif comm.startswith("workflow"):
            kind = "workflow activation thread"
        else:
            kind = "other Python threads"
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    return kinds


def _children(pid: int) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), comm))
    return found


@dataclass
class Child:
    """A child process in its own session, its output in `log`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C reaches only us, and we stop children in order.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _live.add(self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        _live.discard(process)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  [{self.name}] {line}" for line in text[-lines:])

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.process.returncode}\n{self.tail()}"
            )

    async def wait_for_line(self, needle: str, within: float = READY_TIMEOUT) -> None:
        deadline = clock() + within
        while clock() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                if needle in self.log.read_text(errors="replace"):
                    return
            await asyncio.sleep(0.05)
        raise BenchError(f"{self.name} did not print {needle!r} in {within:g}s\n{self.tail()}")

    async def wait_for_http(
        self, url: str, within: float = READY_TIMEOUT, headers: Mapping[str, str] | None = None
    ) -> None:
        deadline = clock() + within
        async with httpx.AsyncClient(timeout=2, headers=dict(headers or {})) as http:
            while clock() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise BenchError(f"{self.name} did not answer {url} in {within:g}s\n{self.tail()}")


class BenchError(Exception):
    pass


@dataclass
class MailSink:
    """`python -m nudge.dev.mailcatcher` in its own process; counted through its JSON API."""

    child: Child
    smtp_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/messages"

    async def messages(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=60) as http:
            response = await http.get(self.url)
            response.raise_for_status()
            found: list[dict[str, Any]] = response.json()
            return found

    async def count(self) -> int:
        return len(await self.messages())


OTHERS = "everything else on the machine"


@dataclass
class CpuSnapshot:
    at: float
    machine: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)

    def since(self, before: CpuSnapshot, threads: bool = False) -> list[tuple[str, float, float]]:
        """(process, CPU seconds, share of one core) for the interval between two snapshots."""
        wall = self.at - before.at
        mine, theirs = (self.threads, before.threads) if threads else (self.seconds, before.seconds)
        rows = []
        for name, now in mine.items():
            spent = now - theirs.get(name, 0.0)
            rows.append((name, spent, spent / wall if wall > 0 else float("nan")))
        return rows


class CpuTally:
    """CPU per process and per thread kind, summed over one or more measured intervals."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.seconds: dict[str, float] = {}
        self.threads: dict[str, float] = {}

    def add(self, before: CpuSnapshot, after: CpuSnapshot) -> None:
        self.wall += after.at - before.at
        for threads, into in ((False, self.seconds), (True, self.threads)):
            for name, spent, _ in after.since(before, threads):
                into[name] = into.get(name, 0.0) + spent
        ours = sum(now - before.seconds.get(name, 0.0) for name, now in after.seconds.items())
        others = max(0.0, after.machine - before.machine - ours)
        self.seconds[OTHERS] = self.seconds.get(OTHERS, 0.0) + others

    def print(self, title: str) -> None:
        for what, spent in (("process", self.seconds), ("thread kind", self.threads)):
            busy = sorted(
                ((name, seconds) for name, seconds in spent.items() if seconds > 0.005),
                key=lambda item: -item[1],
            )
            if not busy:
                continue
            share = 100 / self.wall if self.wall else float("nan")
            print_table(
                f"{title}: CPU per {what} over {self.wall:.1f} s wall ({os.cpu_count()} cores)",
                [what, "cpu s", "% of one core"],
                [(name, seconds, seconds * share) for name, seconds in busy],
            )


class Bench:
    """One benchmark run: temp dir, dev server, database and child processes, all cleaned up."""

    def __init__(
        self,
        name: str,
        *,
        keep: Path | None = None,
        profile: Path | None = None,
        bytecode_cache: bool = True,
    ) -> None:
        self.name = name
        self.bytecode_cache = bytecode_cache
        self.keep = keep
        self.profile_dir = profile
        self.run_id = f"{name}{int(time.time())}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir = Path()
        self.env: WorkflowEnvironment | None = None
        self.children: list[Child] = []
        self._profilers: dict[str, Child] = {}
        self._database_url: str | None = None

    async def __aenter__(self) -> Bench:
        if self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            self.dir = self.keep
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"nudge-{self.name}-")
            self.dir = Path(self._tmp.name)
        try:
            db_file = self.dir / "temporal.db"
            self.env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=temporal_binary(),
                dev_server_database_filename=str(db_file),
                dev_server_extra_args=extra_args(db_file),
                data_converter=pydantic_data_converter,
            )
        except BaseException:
            self._cleanup_dir()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            for name in list(self._profilers):
                self.stop_profile(name)
            # Workers and the API first, while the server they talk to is still up.
            for child in reversed(self.children):
                child.stop()
            if self.env is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.env.shutdown())
        finally:
            self._cleanup_dir()
        if self.keep is not None:
            say(f"kept logs and databases in {self.keep}")

    def _cleanup_dir(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---- the pieces --------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        assert self.env is not None
        return self.env.client

    @property
    def temporal_address(self) -> str:
        return self.client.service_client.config.target_host

    async def database(self) -> str:
        """A fresh Nudge database (SQLite, migrated), the same for every process of the run."""
        if self._database_url is None:
            url = f"sqlite+aiosqlite:///{self.dir / 'nudge.storage.db'}"
            await migrate_async(url)
            self._database_url = url
        return self._database_url

    def nudge_env(self, **settings: object) -> dict[str, str]:
        """The environment of a Nudge process: os.environ plus NUDGE_* for this run."""
        env = dict(os.environ)
        env.update(
            {
                "NUDGE_TEMPORAL_ADDRESS": self.temporal_address,
                "NUDGE_API_KEY": API_KEY,
                "NUDGE_ENV": "development",  # the harness's keys are not secrets
                "NUDGE_FROM_EMAIL": FROM_EMAIL,
                # Benchmarks measure throughput: sends are never held for the night.
                "NUDGE_QUIET_HOURS": "",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self._database_url is not None:
            env["NUDGE_DATABASE_URL"] = self._database_url
        if self.bytecode_cache:
            # The workflow sandbox re-imports flow modules for every journey; without .pyc files
            # (PYTHONDONTWRITEBYTECODE) each re-import compiles them again. Deployed code has
            # its bytecode, so the children get a cache of their own, outside the repo.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.dir / "pycache")
        env.update({f"NUDGE_{k.upper()}": str(v) for k, v in settings.items()})
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, env or self.nudge_env(), self.dir / f"{name}.log")
        child.start()
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        if child.name in self._profilers:
            self.stop_profile(child.name)
        child.stop()

    async def mail_sink(self) -> MailSink:
        smtp_port, http_port = free_port(), free_port()
        argv = [PYTHON, "-m", "nudge.dev.mailcatcher", "--smtp-port", str(smtp_port)]
        child = self.spawn("mailcatcher", [*argv, "--http-port", str(http_port)])
        sink = MailSink(child, smtp_port, http_port)
        await child.wait_for_http(sink.url)
        return sink

    async def worker(self, task_queue: str, time_scale: float, sink: MailSink) -> Child:
        """`python worker.py`, as `make run` starts it, on this run's server and database."""
        env = self.nudge_env(
            database_url=await self.database(),
            task_queue=task_queue,
            time_scale=time_scale,
            smtp_host="127.0.0.1",
            smtp_port=sink.smtp_port,
        )
        child = self.spawn("worker", [PYTHON, "worker.py"], env)
        await child.wait_for_line("worker polling task queue")
        return child

    async def api(self, task_queue: str, time_scale: float = 1.0) -> tuple[Child, str]:
        """The API as `make run` starts it (`uvicorn api.app:app`); returns it and its URL."""
        port = free_port()
        env = self.nudge_env(
            database_url=await self.database(), task_queue=task_queue, time_scale=time_scale
        )
        argv = [PYTHON, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
        child = self.spawn("api", argv, env)
        url = f"http://127.0.0.1:{port}"
        await child.wait_for_http(f"{url}/healthz")
        return child, url

    # ---- observing -----------------------------------------------------------------------------

    def cpu(self) -> CpuSnapshot:
        """CPU seconds so far of this process, the Temporal server and every running child."""
        snapshot = CpuSnapshot(at=clock(), machine=_machine_busy_seconds())
        snapshot.seconds["bench driver (this process)"] = time.process_time()
        for pid, comm in _children(os.getpid()):
            if comm.startswith("temporal"):
                snapshot.seconds["temporal dev server"] = _cpu_seconds(pid) or 0.0
        for child in self.children:
            if child.running and not child.name.startswith("py-spy"):
                snapshot.seconds[child.name] = _cpu_seconds(child.pid) or 0.0
                for kind, seconds in _thread_cpu(child.pid).items():
                    snapshot.threads[f"{child.name}: {kind}"] = seconds
        return snapshot

    def print_cpu(self, title: str, before: CpuSnapshot, after: CpuSnapshot) -> None:
        tally = CpuTally()
        tally.add(before, after)
        tally.print(title)

    def profile(self, child: Child) -> None:
        """Sample `child` with py-spy until it stops, if --profile was given (raw stacks)."""
        if self.profile_dir is None:
            return
        spy = Path(PYTHON).parent / "py-spy"
        if not spy.exists():
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{self.name}-{child.name}.txt"
        # --gil: only the thread holding the GIL, so the samples are Python CPU, not waiting.
        argv = [str(spy), "record", "--pid", str(child.pid), "--rate", "100", "--gil"]
        argv += ["--format", "raw"]
        spy_child = self.spawn(f"py-spy-{child.name}", [*argv, "--output", str(out)], None)
        self._profilers[child.name] = spy_child

    def stop_profile(self, name: str) -> None:
        spy = self._profilers.pop(name, None)
        if spy is not None:
            spy.stop(signal.SIGINT)  # py-spy writes its output on SIGINT
            say(f"profile of {name}: {self.profile_dir}/{self.name}-{name}.txt")


# ---- waiting on the server -------------------------------------------------------------------


async def wait_for_count(
    client: Client,
    query: str,
    count: int,
    within: float,
    *,
    also: Callable[[], None] | None = None,
    interval: float = 0.2,
) -> int:
    """Poll a visibility count until it reaches `count` (or the timeout); returns the last one."""
    deadline = clock() + within
    seen = 0
    while True:
        seen = (await client.count_workflows(query)).count
        if seen >= count or clock() > deadline:
            return seen
        if also is not None:
            also()
        await asyncio.sleep(interval)


async def close_times(client: Client, query: str) -> list[datetime]:
    return [w.close_time async for w in client.list_workflows(query) if w.close_time is not None]


async def pool(count: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Run work(0..count-1) with at most `concurrency` in flight (fixed workers, no task per item)."""
    items = iter(range(count))

    async def runner() -> None:
        for i in items:
            await work(i)

    await asyncio.gather(*(runner() for _ in range(max(1, min(concurrency, count)))))


# ---- entry point -----------------------------------------------------------------------------


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """asyncio.run with SIGTERM treated like Ctrl-C: the `finally`s clean everything up."""

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main()

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "interrupted: stopped every process; temp files removed (unless --keep)",
            file=sys.stderr,
        )
        return 130
    except BenchError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 1
