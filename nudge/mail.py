"""Building MIME messages and handing them to an SMTP server, exactly once.

The delivery protocol closes all but a sliver of the window SMTP leaves open. An SMTP server
accepts a message at the final `.` of DATA, and discards a message whose connection drops before
it. So the sender streams the whole message, then lets the caller commit "sent", and only then
writes the `.`:
  - a crash before the commit: the server never saw the `.` and dropped the message, and the
    caller's record does not say "sent": resending it is safe;
  - a crash after the commit: the `.` is one socket write away, and the record says "sent":
    it is never sent again.
What remains is the time of that one write, and a server that fails after receiving the `.`
without replying (then the message may or may not have been accepted; the record says sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, getaddresses
from typing import Any

import aiosmtplib
import dkim
from aiosmtplib.email import extract_recipients, extract_sender
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from nudge.render import RenderedEmail

Commit = Callable[[], Awaitable[None]]


def _clean(value: str) -> str:
    # No contact field may smuggle a CR/LF into a header.
    return " ".join(value.split())


def build_message(
    email: RenderedEmail,
    *,
    from_email: str,
    to_email: str,
    to_name: str | None,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    [(from_name, from_addr)] = getaddresses([from_email])
    message["From"] = Address(display_name=_clean(from_name), addr_spec=from_addr)
    message["To"] = Address(display_name=_clean(to_name or ""), addr_spec=to_email)
    message["Subject"] = _clean(email.subject)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = f"<{message_id}>"
    for name, value in (headers or {}).items():
        message[name] = _clean(value)
    message.set_content(email.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(email.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message


# Signed with the message: the headers a receiver must be able to trust were not altered.
DKIM_HEADERS = (
    b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version", b"Content-Type",
    b"List-Unsubscribe", b"List-Unsubscribe-Post",
)  # fmt: skip


class DkimSigner:
    """Signs the exact bytes that go on the wire (relaxed/relaxed, rsa-sha256)."""

    def __init__(self, selector: str, domain: str, private_key: bytes) -> None:
        self.selector, self.domain, self.private_key = (
            selector.encode(),
            domain.encode(),
            private_key,
        )

    def sign(self, raw: bytes) -> bytes:
        # Headers absent from this message are signed as absent ("oversigned"), so none of
        # them can be added in transit without breaking the signature.
        signature: bytes = dkim.sign(
            raw,
            self.selector,
            self.domain,
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(DKIM_HEADERS),
        )
        return signature + raw


class _TwoPhaseSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client with a DATA phase that runs `commit` just before the final `.`."""

    commit: Commit | None = None

    # aiosmtplib's own signature, timeout included.
    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: Any = None,  # noqa: ASYNC109
    ) -> aiosmtplib.SMTPResponse:
        commit, protocol = self.commit, self.protocol
        if commit is None or protocol is None:
            return await super().data(message, timeout=timeout)
        if isinstance(message, str):
            message = message.encode("ascii")
        body = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))
        wait = self.timeout if timeout is None or not isinstance(timeout, float | int) else timeout
        # Mirrors SMTPProtocol.execute_data_command (aiosmtplib 5), split at the final dot.
        try:
            async with protocol._command_lock:  # type: ignore[union-attr]
                protocol._response_pending = True
                protocol.write(b"DATA\r\n")
                start = await protocol.read_response(timeout=wait)
                if start.code != 354:
                    raise aiosmtplib.SMTPDataError(start.code, start.message)
                protocol.write(body)
                await commit()
                protocol._response_pending = True
                protocol.write(b".\r\n")
                response = await protocol.read_response(timeout=wait)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response


class SmtpSender:
    """Sends over a small pool of kept-alive SMTP connections (no connect/EHLO/QUIT per email).

    Failures surface as aiosmtplib exceptions (or OSError) for the caller to classify.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 30.0,
        pool_size: int = 8,
        signer: DkimSigner | None = None,
    ) -> None:
        self.host, self.port, self.timeout, self.signer = host, port, timeout, signer
        self._idle: list[_TwoPhaseSMTP] = []
        self._slots = asyncio.Semaphore(pool_size)

    async def send(self, message: EmailMessage, *, commit: Commit | None = None) -> None:
        """Deliver `message`; `commit` (if given) runs once the server holds all of it but has
        not yet accepted it. A connection from the pool that turns out dead before anything
        was committed is replaced once, transparently."""
        sender, recipients = extract_sender(message), extract_recipients(message)
        if sender is None or not recipients:
            raise ValueError("a message needs a From and a To header")
        raw = message.as_bytes(policy=SMTP_POLICY)
        if self.signer is not None:
            raw = self.signer.sign(raw)
        async with self._slots:
            client, reused = await self._connection()
            committed = False

            async def commit_once() -> None:
                nonlocal committed
                if commit is not None:
                    await commit()
                committed = True

            client.commit = commit_once
            try:
                await client.sendmail(sender, recipients, raw)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as err:
                client.close()
                if not reused or committed:
                    raise
                del err  # a kept-alive connection the server had closed: one fresh try
                client = await self._connect()
                client.commit = commit_once
                try:
                    await client.sendmail(sender, recipients, raw)
                except BaseException:
                    client.close()
                    raise
            except BaseException:
                client.close()
                raise
            client.commit = None
            self._idle.append(client)

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    async def _connection(self) -> tuple[_TwoPhaseSMTP, bool]:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
        return await self._connect(), False

    async def _connect(self) -> _TwoPhaseSMTP:
        # STARTTLS is used whenever the server offers it (providers do; the mail catcher doesn't).
        client = _TwoPhaseSMTP(hostname=self.host, port=self.port, timeout=self.timeout)
        await client.connect()
        return client


def smtp_code(err: BaseException) -> int | None:
    """The SMTP reply code behind an aiosmtplib error, or None for connection-level trouble."""
    if isinstance(err, aiosmtplib.SMTPRecipientsRefused):
        return min(r.code for r in err.recipients) if err.recipients else None
    if isinstance(err, aiosmtplib.SMTPResponseException):
        return err.code
    return None
