"""`make run`: the whole local stack in one terminal, one Ctrl-C to stop it.

Starts the Temporal dev server, migrates the database, then runs the mail catcher (only for a
loopback NUDGE_SMTP_HOST whose port is free; otherwise mail goes where it points), the worker
and the API as child processes, prefixing each line they print with their name. They run with
`NUDGE_ENV=development` (unless the environment says otherwise), which lets them start on the
default secrets: a developer's machine, never a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import traceback
from asyncio.subprocess import Process
from dataclasses import dataclass, field

from nudge.settings import Settings, get_settings, is_loopback
from nudge.storage.db import migrate

HOST = "127.0.0.1"
API_PORT = 8000
TEMPORAL_UI_PORT = 8233
MAIL_WEB_PORT = 8025
TEMPORAL_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class StackError(Exception):
    pass


@dataclass
class Child:
    name: str
    argv: list[str]
    process: Process | None = None
    output: asyncio.Task[None] | None = field(default=None, repr=False)


def port_is_free(port: int, host: str = HOST) -> bool:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return False
    with socket.socket(family, kind, proto) as sock:
        # The servers set this too; without it a port in TIME_WAIT would look busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class MailPlan:
    """Whether `make run` starts its mail catcher, and where Nudge's mail goes."""

    catcher: bool
    where: str


def mail_plan(settings: Settings) -> MailPlan:
    """The mail catcher only stands in for a loopback SMTP host whose port is free: a real
    server (NUDGE_SMTP_HOST elsewhere) or whatever already listens locally gets the mail."""
    host, port = settings.smtp_host, settings.smtp_port
    where = f"{host}:{port}"
    if not is_loopback(host):
        return MailPlan(False, f"SMTP {where} ({settings.smtp_tls_mode}): real mail, no catcher")
    if not port_is_free(port, host):
        return MailPlan(False, f"SMTP {where}: already listening there, so no mail catcher")
    return MailPlan(True, f"mail catcher http://localhost:{MAIL_WEB_PORT} (SMTP {where})")


async def start(child: Child) -> None:
    child.process = await asyncio.create_subprocess_exec(
        *child.argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Own process group: a Ctrl-C in the terminal reaches only us, and we stop the
        # children in order instead of having them all die at once.
        start_new_session=True,
        limit=1 << 20,
    )
    child.output = asyncio.create_task(relay(child.name, child.process))


async def relay(name: str, process: Process) -> None:
    assert process.stdout is not None
    while True:
        try:
            line = await process.stdout.readline()
        except ValueError:  # longer than the stream limit; the rest of it is dropped
            print(f"[{name}] <line too long, cut>", flush=True)
            continue
        if not line:
            return
        print(f"[{name}] {line.decode(errors='replace').rstrip()}", flush=True)


async def wait_for_port(child: Child, port: int, stopping: asyncio.Event) -> None:
    assert child.process is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TEMPORAL_READY_TIMEOUT
    while not stopping.is_set():
        if child.process.returncode is not None:
            code = child.process.returncode
            raise StackError(f"{child.name} exited with code {code} before listening on {port}")
        if loop.time() > deadline:
            raise StackError(
                f"{child.name} did not accept connections on {HOST}:{port} "
                f"within {TEMPORAL_READY_TIMEOUT:g}s"
            )
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.25)
            continue
        writer.close()
        return


async def stop(child: Child) -> None:
    process = child.process
    if process is not None and process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            print(f"[{child.name}] did not stop in {STOP_TIMEOUT:g}s, killing it", flush=True)
            process.kill()
            await process.wait()
    if child.output is not None:
        # A grandchild still holding the pipe open must not hang the shutdown.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.output, 2)


def python(*args: str) -> list[str]:
    # -u: the children's output goes to a pipe, which Python would otherwise block-buffer.
    return [sys.executable, "-u", *args]


def banner(api_key: str, mail: MailPlan) -> str:
    lines = [
        "Nudge is running",
        "",
        f"API          http://localhost:{API_PORT}  (docs: /docs)",
        f"Temporal UI  http://localhost:{TEMPORAL_UI_PORT}",
        f"Mail goes to {mail.where}",
        f"API key      {api_key}",
        "",
        "Ctrl-C stops everything.",
    ]
    width = max(len(line) for line in lines)
    rows = [f"| {line.ljust(width)} |" for line in lines]
    edge = "+" + "-" * (width + 2) + "+"
    return "\n".join([edge, *rows, edge])


async def run() -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    settings = get_settings()
    _, _, port_text = settings.temporal_address.rpartition(":")
    temporal_port = int(port_text) if port_text.isdigit() else 7233
    plan = mail_plan(settings)
    check_ports_free(temporal_port, plan)
    print(f"[devstack] mail goes to {plan.where}", flush=True)

    temporal_args = ["--port", str(temporal_port), "--ui-port", str(TEMPORAL_UI_PORT)]
    temporal = Child("temporal", python("-m", "nudge.dev.temporal_dev", *temporal_args))
    mail_args = ["--host", settings.smtp_host, "--smtp-port", str(settings.smtp_port)]
    mail_args += ["--http-port", str(MAIL_WEB_PORT), "--store-dir", "data/mail"]
    mail = Child("mail", python("-m", "nudge.dev.mailcatcher", *mail_args))
    worker = Child("worker", python("worker.py"))
    api_args = ["--host", HOST, "--port", str(API_PORT)]
    api = Child("api", python("-m", "uvicorn", "api.app:app", *api_args))

    started: list[Child] = []
    try:
        await start(temporal)
        started.append(temporal)
        await wait_for_port(temporal, temporal_port, stopping)
        if not stopping.is_set():
            await migrate_database(settings)
        for child in (mail, worker, api) if plan.catcher else (worker, api):
            if stopping.is_set():
                break
            await start(child)
            started.append(child)
        else:
            print(banner(settings.api_key, plan), flush=True)
        return await wait_for_stop(started, stopping)
    finally:
        # The API and worker go first, while the Temporal server they talk to is still up.
        await asyncio.gather(*(stop(c) for c in started if c is not temporal))
        await stop(temporal)


def check_ports_free(temporal_port: int, mail: MailPlan) -> None:
    ports = {"Temporal gRPC": temporal_port, "Temporal UI": TEMPORAL_UI_PORT, "API": API_PORT}
    if mail.catcher:
        ports["mail catcher web"] = MAIL_WEB_PORT
    busy = [f"{name} port {port}" for name, port in ports.items() if not port_is_free(port)]
    if busy:
        raise StackError(f"cannot start, already in use: {', '.join(busy)} (another `make run`?)")


async def migrate_database(settings: Settings) -> None:
    print("[devstack] migrating the database", flush=True)
    try:
        # Alembic's env.py runs an event loop of its own, which cannot nest in ours.
        await asyncio.to_thread(migrate, settings.database_url)
    except Exception as err:
        traceback.print_exc()
        raise StackError(f"database migration failed ({err!r}); stopped the rest") from err


async def wait_for_stop(started: list[Child], stopping: asyncio.Event) -> int:
    """0 once asked to stop (Ctrl-C); a StackError as soon as a child exits on its own."""
    waits = {asyncio.create_task(c.process.wait()): c for c in started if c.process}
    stop_wait = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([stop_wait, *waits], return_when=asyncio.FIRST_COMPLETED)
    for task in [stop_wait, *waits]:
        task.cancel()
    if stop_wait in done:
        print("[devstack] stopping", flush=True)
        return 0
    exited = waits[done.pop()]
    assert exited.process is not None
    code = exited.process.returncode
    raise StackError(f"{exited.name} exited unexpectedly with code {code}; stopped the rest")


def main() -> None:
    # Read by get_settings() here and inherited by every child.
    os.environ.setdefault("NUDGE_ENV", "development")
    try:
        code = asyncio.run(run())
    except StackError as err:
        print(f"[devstack] error: {err}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
