"""A provider-like SMTP server for the tests: aiosmtpd on loopback with AUTH required and
STARTTLS or implicit TLS, its certificate made in the test by trustme (no network, no files
kept). It can drop a connection in the middle of DATA, like a network or a server going away."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USERNAME = "AKIANUDGETEST"
PASSWORD = "right-password"


@dataclass
class Received:
    raw: bytes
    login: str | None
    tls: bool

    @property
    def message_id(self) -> str:
        parsed = BytesParser(policy=default_policy).parsebytes(self.raw)
        return str(parsed["Message-ID"]).strip("<>")


@dataclass
class ProviderServer:
    """What the server saw; `mode` is "starttls", "tls" or "none" (no TLS, AUTH not offered)."""

    mode: str
    port: int = 0
    password: str = PASSWORD
    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    open_connections: int = 0
    peak_connections: int = 0
    connections: int = 0
    drop_data: int = 0
    dropped: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> list[str]:
        with self.lock:
            return [r.message_id for r in self.received]

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Until the server has seen every connection close (it runs on its own thread)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open_connections:
            assert loop.time() < deadline, f"{self.open_connections} connection(s) still open"
            await asyncio.sleep(0.01)


class _Handler:
    def __init__(self, server: ProviderServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
        with self.server.lock:
            self.server.received.append(
                Received(envelope.original_content, login, session.ssl is not None)
            )
        return "250 2.0.0 Ok: queued"

    def authenticate(
        self, smtp: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USERNAME.encode(),
            self.server.password.encode(),
        )
        with self.server.lock:
            self.server.logins.append((mechanism, ok))
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)


class _SMTP(SMTP):
    """aiosmtpd's server, counting connections and able to drop one mid-DATA."""

    def _server(self) -> ProviderServer:
        server: ProviderServer = self.event_handler.server
        return server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the STARTTLS upgrade of a connection
            with self._server().lock:
                server = self._server()
                server.connections += 1
                server.open_connections += 1
                server.peak_connections = max(server.peak_connections, server.open_connections)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self._server().lock:
            self._server().open_connections -= 1
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        server = self._server()
        if not server.drop_data or self.envelope is None or not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)
            return
        server.drop_data -= 1
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.readuntil(b"\r\n")  # the first line of the message, then gone
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.abort()
        server.dropped.set()


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def provider_server(mode: str, cert: trustme.LeafCert | None) -> Iterator[ProviderServer]:
    server = ProviderServer(mode, port=_free_port())
    handler = _Handler(server)
    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
    options: dict[str, Any] = {
        "hostname": "127.0.0.1",
        "port": server.port,
        "server_hostname": "localhost",
        "authenticator": handler.authenticate,
        "auth_required": mode != "none",
        # Implicit TLS is TLS from the first byte: aiosmtpd only knows STARTTLS as TLS.
        "auth_require_tls": mode == "starttls",
    }
    if mode == "starttls":
        options |= {"tls_context": context, "require_starttls": True}
    elif mode == "tls":
        options["ssl_context"] = context
    controller = _Controller(handler, **options)
    controller.start()
    # The controller connects once to itself to start: that connection is not the tests'.
    deadline = time.monotonic() + 5
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    with server.lock:
        server.connections = server.peak_connections = 0
    try:
        yield server
    finally:
        controller.stop()


@dataclass
class Certificates:
    ca: trustme.CA
    ca_file: Path

    def leaf(self, *names: str) -> trustme.LeafCert:
        return self.ca.issue_cert(*names)


def certificates(folder: Path) -> Certificates:
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certificates(ca, ca_file)
