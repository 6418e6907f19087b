"""A local mail catcher: a real SMTP server that keeps every message, plus a small web UI.

Run it with `python -m nudge.dev.mailcatcher`; tests start a `MailCatcher` on port 0 in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import re
import signal
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from functools import cached_property
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response


@dataclass(frozen=True)
class CaughtMessage:
    id: int
    message_id: str | None
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    received_at: datetime
    raw: bytes

    @classmethod
    def from_raw(
        cls, id: int, mail_from: str, rcpt_tos: list[str], received_at: datetime, raw: bytes
    ) -> CaughtMessage:
        parsed = _parse(raw)
        message_id = parsed.get("Message-ID")
        return cls(
            id=id,
            message_id=str(message_id).strip().strip("<>") if message_id else None,
            mail_from=mail_from,
            rcpt_tos=list(rcpt_tos),
            subject=str(parsed.get("Subject", "")),
            received_at=received_at,
            raw=raw,
        )

    @cached_property
    def message(self) -> EmailMessage:
        return _parse(self.raw)

    @property
    def html(self) -> str | None:
        """The HTML as a browser reads it: Nudge sends non-ASCII characters as numeric character
        references (a 7bit part needs no transfer encoding), decoded back here."""
        content = self._body("html")
        return _NON_ASCII_REF.sub(_char, content) if content is not None else None

    @property
    def text(self) -> str | None:
        return self._body("plain")

    def _body(self, subtype: str) -> str | None:
        part = self.message.get_body(preferencelist=(subtype,))
        if part is None or part.get_content_type() != f"text/{subtype}":
            return None
        try:
            content = part.get_content()
        except (LookupError, UnicodeError):
            # An unknown or lying charset should not hide the body from someone debugging it.
            payload = part.get_payload(decode=True)
            content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
        # SMTP carries CRLF line ends; callers compare bodies with Python strings.
        return content.replace("\r\n", "\n") if isinstance(content, str) else None


_NON_ASCII_REF = re.compile(r"&#(?:(\d{3,7})|x([0-9a-fA-F]{2,6}));")


def _char(match: re.Match[str]) -> str:
    code = int(match[1]) if match[1] else int(match[2], 16)
    return chr(code) if 128 <= code <= 0x10FFFF else match[0]


def _parse(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _bindable_port(host: str, port: int) -> int:
    """Check that host:port can be listened on (port 0: pick a free one) and return the port.

    aiosmtpd's Controller connects to its own `port` to finish starting, so it cannot be
    given 0; and when the port is taken it only reports that after its ready timeout.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        # Same option asyncio's create_server sets, so a restart is not refused over TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise OSError(err.errno, f"mail catcher cannot listen on {host}:{port}: {err}") from err
        bound: int = sock.getsockname()[1]
        return bound


class _Handler:
    def __init__(self, catcher: MailCatcher) -> None:
        self._catcher = catcher

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self._catcher._receive(
            envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b""
        )


class MailCatcher:
    """SMTP server on `host:port` keeping every accepted message in memory (and `store_dir`)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 1025, store_dir: Path | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self._lock = threading.Lock()
        self._messages: list[CaughtMessage] = []
        # Ids are never reused, even after clear(), so an open /messages/<id> page
        # cannot silently start showing a different message.
        self._next_id = 1
        self._failures: list[tuple[int, str]] = []
        self._controller: Controller | None = None

    def start(self) -> None:
        if self._controller is not None:
            raise RuntimeError("mail catcher is already running")
        self._load_store()
        self.port = _bindable_port(self.host, self.port)
        # A fresh Controller each time: a stopped one has closed its event loop.
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            # Without it aiosmtpd calls socket.getfqdn(), which can stall on a DNS lookup.
            server_hostname="localhost",
            ident="Nudge mail catcher",
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> MailCatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def messages(self) -> list[CaughtMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._messages)

    def get(self, id: int) -> CaughtMessage | None:
        with self._lock:
            return next((m for m in self._messages if m.id == id), None)

    def clear(self) -> int:
        """Forget every message (and delete the stored copies); returns how many there were."""
        with self._lock:
            cleared, self._messages = self._messages, []
            if self.store_dir is not None:
                for message in cleared:
                    for suffix in (".eml", ".json"):
                        (self.store_dir / f"{message.id}{suffix}").unlink(missing_ok=True)
        return len(cleared)

    def fail_next(self, count: int = 1, code: int = 451, text: str = "Try again later") -> None:
        """Answer the next `count` DATA commands with `code text` instead of accepting them."""
        if not 400 <= code <= 599:
            raise ValueError(f"fail_next needs a 4xx or 5xx SMTP code, got {code}")
        with self._lock:
            self._failures.extend([(code, " ".join(text.split()))] * count)

    # A timeout argument reads better in tests than wrapping every call in asyncio.timeout.
    async def wait_for(self, count: int, timeout: float = 10.0) -> list[CaughtMessage]:  # noqa: ASYNC109
        """Wait until at least `count` messages were caught; returns all of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            messages = self.messages
            if len(messages) >= count:
                return messages
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"mail catcher on {self.host}:{self.port} has {len(messages)} message(s) "
                    f"after {timeout:g}s, expected at least {count}"
                )
            await asyncio.sleep(0.02)

    def _receive(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> str:
        # Runs on the Controller's thread.
        with self._lock:
            if self._failures:
                code, text = self._failures.pop(0)
                return f"{code} {text}"
            message = CaughtMessage.from_raw(
                self._next_id, mail_from, rcpt_tos, datetime.now(UTC), raw
            )
            self._next_id += 1
            if self.store_dir is not None:
                self._save(message)
            self._messages.append(message)
        return "250 OK: message caught"

    def _save(self, message: CaughtMessage) -> None:
        assert self.store_dir is not None
        self.store_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "mail_from": message.mail_from,
            "rcpt_tos": message.rcpt_tos,
            "received_at": message.received_at.isoformat(),
        }
        # The envelope goes next to the .eml so it stays byte-for-byte what was received;
        # the .json is written first so an .eml on disk always has its envelope.
        _write_atomic(self.store_dir / f"{message.id}.json", json.dumps(meta).encode())
        _write_atomic(self.store_dir / f"{message.id}.eml", message.raw)

    def _load_store(self) -> None:
        if self.store_dir is None or not self.store_dir.is_dir():
            return
        with self._lock:
            known = {m.id for m in self._messages}
            for path in self.store_dir.glob("*.eml"):
                if not path.stem.isdigit() or int(path.stem) in known:
                    continue
                self._messages.append(_load_message(path))
            self._messages.sort(key=lambda m: m.id)
            if self._messages:
                self._next_id = max(self._next_id, self._messages[-1].id + 1)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load_message(path: Path) -> CaughtMessage:
    raw = path.read_bytes()
    meta_path = path.with_suffix(".json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        mail_from = str(meta["mail_from"])
        rcpt_tos = [str(r) for r in meta["rcpt_tos"]]
        received_at = datetime.fromisoformat(meta["received_at"])
    else:
        # An .eml dropped in by hand: the headers are the best guess at the envelope.
        parsed = _parse(raw)
        mail_from = next((a for _, a in getaddresses(parsed.get_all("From", []))), "")
        rcpt_tos = [a for _, a in getaddresses(parsed.get_all("To", []) + parsed.get_all("Cc", []))]
        received_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return CaughtMessage.from_raw(int(path.stem), mail_from, rcpt_tos, received_at, raw)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; }
td.h { white-space: nowrap; font-weight: 600; width: 1%; }
iframe { width: 100%; height: 36rem; border: 1px solid #ccc; background: #fff; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 1rem; border: 1px solid #ddd; }
.muted { color: #777; }
"""


def _page(title: str, body: str, refresh: bool = False) -> HTMLResponse:
    meta = '<meta http-equiv="refresh" content="5">' if refresh else ""
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _when(message: CaughtMessage) -> str:
    return message.received_at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _index(catcher: MailCatcher) -> HTMLResponse:
    rows = "".join(
        f"<tr><td>{html.escape(_when(m))}</td><td>{html.escape(m.mail_from)}</td>"
        f"<td>{html.escape(', '.join(m.rcpt_tos))}</td>"
        f'<td><a href="/messages/{m.id}">{html.escape(m.subject or "(no subject)")}</a></td></tr>'
        for m in reversed(catcher.messages)
    )
    table = (
        f"<table><tr><th>Received</th><th>From</th><th>To</th><th>Subject</th></tr>{rows}</table>"
        if rows
        else '<p class="muted">No messages yet. This page refreshes every 5 seconds.</p>'
    )
    clear = (
        "<button onclick=\"fetch('/api/messages',{method:'DELETE'})"
        '.then(() => location.reload())">Delete all</button>'
    )
    smtp = html.escape(f"{catcher.host}:{catcher.port}")
    return _page(
        "Mail catcher",
        f"<h1>Mail catcher</h1><p class='muted'>SMTP on {smtp} &middot; "
        f"{catcher.count} message(s) {clear}</p>{table}",
        refresh=True,
    )


def _detail(message: CaughtMessage) -> HTMLResponse:
    parsed = message.message
    headers = "".join(
        f'<tr><td class="h">{html.escape(name)}</td><td>{html.escape(str(value))}</td></tr>'
        for name, value in parsed.items()
    )
    parts = [
        f'<p><a href="/">&larr; All messages</a> &middot; '
        f'<a href="/messages/{message.id}.eml">Download .eml</a></p>',
        f"<h1>{html.escape(message.subject or '(no subject)')}</h1>",
        f"<table>{headers}</table>",
        "<p class='muted'>Envelope: "
        f"{html.escape(message.mail_from)} &rarr; {html.escape(', '.join(message.rcpt_tos))}</p>",
    ]
    attachments = [
        f"<li>{html.escape(part.get_filename() or '(unnamed)')} "
        f"({html.escape(part.get_content_type())})</li>"
        for part in parsed.iter_attachments()
    ]
    if attachments:
        parts.append(f"<h2>Attachments</h2><ul>{''.join(attachments)}</ul>")
    if message.html is not None:
        # An empty sandbox runs no scripts and gets an opaque origin, so the email
        # cannot reach this page or the catcher's API.
        srcdoc = html.escape(message.html, quote=True)
        parts.append(f'<h2>HTML</h2><iframe sandbox srcdoc="{srcdoc}"></iframe>')
    if message.text is not None:
        parts.append(f"<h2>Text</h2><pre>{html.escape(message.text)}</pre>")
    return _page(message.subject or f"Message {message.id}", "".join(parts))


def create_web_app(catcher: MailCatcher) -> FastAPI:
    app = FastAPI(title="Nudge mail catcher", docs_url=None, redoc_url=None)

    def lookup(message_id: int) -> CaughtMessage:
        message = catcher.get(message_id)
        if message is None:
            raise HTTPException(status_code=404, detail=f"no message {message_id}")
        return message

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return _index(catcher)

    # Declared before /messages/{id} so that "3.eml" is not taken for an id.
    @app.get("/messages/{message_id:int}.eml")
    def download(message_id: int) -> Response:
        return Response(
            lookup(message_id).raw,
            media_type="message/rfc822",
            headers={"Content-Disposition": f'attachment; filename="{message_id}.eml"'},
        )

    @app.get("/messages/{message_id:int}", response_class=HTMLResponse)
    def show(message_id: int) -> HTMLResponse:
        return _detail(lookup(message_id))

    @app.get("/api/messages")
    def list_messages() -> list[dict[str, Any]]:
        return [
            {
                "id": m.id,
                "message_id": m.message_id,
                "from": m.mail_from,
                "to": m.rcpt_tos,
                "subject": m.subject,
                "received_at": m.received_at.isoformat(),
            }
            for m in catcher.messages
        ]

    @app.delete("/api/messages")
    def clear_messages() -> dict[str, int]:
        return {"deleted": catcher.clear()}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Local SMTP mail catcher with a web UI.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--store-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    catcher = MailCatcher(args.host, args.smtp_port, args.store_dir)
    catcher.start()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    # uvicorn shuts down on SIGTERM and then re-raises it; with this handler in place the
    # re-raise becomes a clean exit instead of a kill, so the finally below still runs.
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        app = create_web_app(catcher)
        config = uvicorn.Config(app, host=args.host, port=args.http_port, log_level="warning")
        server = uvicorn.Server(config)
        print(f"Mail catcher SMTP: {args.host}:{catcher.port}", flush=True)
        print(f"Mail catcher web:  http://{args.host}:{args.http_port}", flush=True)
        if args.store_dir is not None:
            print(f"Mail catcher keeps messages in {args.store_dir}", flush=True)
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        catcher.stop()


if __name__ == "__main__":
    main()
