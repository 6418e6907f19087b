"""Open and click tracking: a 1x1 pixel per message and every link rewritten to a signed redirect.

A click link carries the message id, the contact and the original URL, signed for the purpose
"click" (nudge/mail/links.py), so the redirect only ever sends a reader to a URL that was
in the email (no open redirect) and a token edited in any way is refused. Links to Nudge's own
unsubscribe page and the `List-Unsubscribe` header stay direct: unsubscribing must never depend
on the tracker.

Machine opens and clicks are recorded with `machine=True` and left out of the human rates:
  - Apple Mail Privacy Protection fetches every image of every message through Apple's proxy,
    whether or not the mail is read; its fetches send the bare user agent `Mozilla/5.0`
    (and some come from Apple's 17.0.0.0/8 network);
  - link scanners of mail gateways (Microsoft Safe Links, Mimecast, Proofpoint, Barracuda...)
    follow links as soon as mail arrives: a click within `NUDGE_TRACKING_SCANNER_SECONDS` of the
    send, a burst that hits `BURST_LINKS` different links of one message within `BURST_SECONDS`
    (every link in that burst is flagged), and user agents of known scanners and HTTP libraries.
"""

from __future__ import annotations

import base64
import html
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nudge import keys
from nudge.mail import links
from nudge.mail.render import RenderedEmail
from nudge.settings import Settings
from nudge.storage.models import Message, MessageEvent, utcnow

# Kinds of message events (`message_events.kind`).
OPEN = "open"
CLICK = "click"
UNSUBSCRIBE = "unsubscribe"

# The smallest transparent GIF: what the pixel endpoint answers.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

BURST_LINKS = 3
BURST_SECONDS = 2.0

# Substrings (lowercase) of user agents that are never a person reading mail.
MACHINE_AGENTS = (
    "bot",
    "spider",
    "crawl",
    "preview",
    "scanner",
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "forcepoint",
    "trendmicro",
    "safelinks",
    "microsoft office protection",
    "headlesschrome",
    "python-",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww",
)
APPLE_PROXY_AGENT = "Mozilla/5.0"
APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")


@dataclass(frozen=True, slots=True)
class ClickClaims:
    contact_id: int
    message_id: str
    url: str


def sign_click(keyring: links.Keyring, claims: ClickClaims) -> str:
    return links.sign_fields(
        keyring, links.CLICK, str(claims.contact_id), claims.message_id, claims.url
    )


def verify_click(keyring: links.Keyring, token: str) -> ClickClaims:
    """The click's claims; raises links.InvalidToken for a token that was forged, altered or
    truncated, or whose URL is not a web link (the redirect never goes anywhere else)."""
    contact_id, message_id, url = links.verify_fields(keyring, links.CLICK, token, 3)
    if not _is_web(url):
        raise links.InvalidToken("not a web link")
    try:
        return ClickClaims(int(contact_id), message_id, url)
    except ValueError as err:
        raise links.InvalidToken(str(err)) from None


def sign_open(keyring: links.Keyring, contact_id: int, message_id: str) -> str:
    return links.sign(keyring, links.OPEN, links.TokenClaims(contact_id, message_id))


def verify_open(keyring: links.Keyring, token: str) -> links.TokenClaims:
    return links.verify(keyring, links.OPEN, token)


def _is_web(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


# ---- rewriting an email -------------------------------------------------------------------

_HREF = re.compile(r"(<a\b[^>]*?\bhref\s*=\s*)([\"'])(.*?)\2", re.IGNORECASE | re.DOTALL)
_TEXT_URL = re.compile(r"https?://[^\s<>\"'()\[\]]+")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def instrument(
    rendered: RenderedEmail, settings: Settings, contact_id: int, message_id: str
) -> RenderedEmail:
    """The email with every web link the template wrote going through the click redirect (the
    HTML part's `<a href>`, and the same URLs in the text part) and an open pixel at the end of
    the HTML; unchanged when `NUDGE_TRACKING` is off. A URL that came with the data (a contact's
    name or property) stays text: it never becomes a signed redirect from the store's domain."""
    if not settings.tracking:
        return rendered
    base = settings.public_url.rstrip("/")
    direct = f"{base}/u/"  # the unsubscribe page stays a direct link
    keyring = keys.keyring(settings)

    def tracked(url: str) -> str:
        if not _is_web(url) or url.startswith(direct):
            return url
        claims = ClickClaims(contact_id, message_id, url)
        return f"{base}/t/c/{sign_click(keyring, claims)}"

    def in_html(match: re.Match[str]) -> str:
        url = html.unescape(match.group(3).strip())
        new = tracked(url)
        if new == url:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{html.escape(new)}{match.group(2)}"

    # Only links the template wrote get tracked, never data (a first name that is a URL): in
    # the HTML part, an `<a href>` (data is escaped there, it can never make one); in the text
    # part, where a URL cannot be told from data, only a URL that is one of those hrefs.
    linked = {html.unescape(m.group(3).strip()) for m in _HREF.finditer(rendered.html)}

    def in_text(match: re.Match[str]) -> str:
        url = match.group(0)
        trail = len(url) - len(url.rstrip(".,;:!?"))
        core, rest = (url[:-trail], url[-trail:]) if trail else (url, "")
        return (tracked(core) if core in linked else core) + rest

    body = _HREF.sub(in_html, rendered.html)
    pixel = (
        f'<img src="{base}/t/o/{sign_open(keyring, contact_id, message_id)}.gif" '
        'width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">'
    )
    ends = list(_BODY_END.finditer(body))
    if ends:
        at = ends[-1].start()
        body = body[:at] + pixel + body[at:]
    else:
        body += pixel
    return RenderedEmail(
        subject=rendered.subject, html=body, text=_TEXT_URL.sub(in_text, rendered.text)
    )


# ---- recording what readers (and machines) do ---------------------------------------------


def machine_agent(user_agent: str | None, client_ip: str | None = None) -> bool:
    """A fetch by a privacy proxy, a scanner or a script rather than by a mail client."""
    agent = (user_agent or "").strip()
    if not agent or agent == APPLE_PROXY_AGENT:
        return True
    if client_ip:
        try:
            if ipaddress.ip_address(client_ip) in APPLE_NETWORK:
                return True
        except ValueError:
            pass
    lowered = agent.lower()
    return any(part in lowered for part in MACHINE_AGENTS)


def scanner_click(sent_at: datetime | None, at: datetime, settings: Settings) -> bool:
    """A click too soon after the send for a person to have read the email."""
    return sent_at is not None and at - sent_at < timedelta(
        seconds=settings.tracking_scanner_seconds
    )


async def _repeat(session: AsyncSession, event: MessageEvent, at: datetime) -> MessageEvent:
    """`event`, or the row that already counts the same open or click (message, kind, link,
    `machine`) with this repeat added: a replayed token grows a count, not the table."""
    same = [
        MessageEvent.message_id == event.message_id,
        MessageEvent.kind == event.kind,
        MessageEvent.machine.is_(event.machine),
        MessageEvent.url.is_(None) if event.url is None else MessageEvent.url == event.url,
    ]
    known = await session.scalar(select(MessageEvent).where(*same).order_by(MessageEvent.id))
    if known is None:
        event.at, event.last_at, event.times = at, at, 1
        session.add(event)
        return event
    known.last_at, known.times = at, known.times + 1
    known.user_agent = event.user_agent or known.user_agent
    return known


async def record_open(
    session: AsyncSession,
    contact_id: int,
    message_id: str,
    *,
    user_agent: str | None,
    client_ip: str | None,
) -> MessageEvent | None:
    """Record a fetch of the pixel: the first one a row, each repeat a count on it."""
    message = await session.get(Message, message_id)
    if message is None or message.contact_id != contact_id:
        return None
    event = MessageEvent(
        message_id=message_id,
        contact_id=contact_id,
        kind=OPEN,
        machine=machine_agent(user_agent, client_ip),
        user_agent=(user_agent or "")[:512] or None,
    )
    return await _repeat(session, event, utcnow())


async def record_click(
    session: AsyncSession,
    claims: ClickClaims,
    *,
    user_agent: str | None,
    client_ip: str | None,
    settings: Settings,
) -> MessageEvent | None:
    message = await session.get(Message, claims.message_id)
    if message is None or message.contact_id != claims.contact_id:
        return None
    now = utcnow()
    machine = machine_agent(user_agent, client_ip) or scanner_click(message.sent_at, now, settings)
    if not machine:
        # A scanner that waits out the send window still hits every link at once.
        since = now - timedelta(seconds=BURST_SECONDS)
        recent = and_(
            MessageEvent.message_id == claims.message_id,
            MessageEvent.kind == CLICK,
            func.coalesce(MessageEvent.last_at, MessageEvent.at) >= since,
        )
        links = await session.scalar(
            select(func.count(func.distinct(MessageEvent.url))).where(
                recent, MessageEvent.url != claims.url
            )
        )
        if (links or 0) + 1 >= BURST_LINKS:
            machine = True
            await session.execute(update(MessageEvent).where(recent).values(machine=True))
    event = MessageEvent(
        message_id=claims.message_id,
        contact_id=claims.contact_id,
        kind=CLICK,
        url=claims.url[:2048],
        machine=machine,
        user_agent=(user_agent or "")[:512] or None,
    )
    return await _repeat(session, event, now)


async def record_unsubscribe(session: AsyncSession, contact_id: int, message_id: str) -> None:
    """One `unsubscribe` event per message, whichever way (header, footer) it came."""
    message = await session.get(Message, message_id)
    if message is None or message.contact_id != contact_id:
        return
    known = await session.scalar(
        select(MessageEvent.id).where(
            MessageEvent.message_id == message_id, MessageEvent.kind == UNSUBSCRIBE
        )
    )
    if known is None:
        session.add(
            MessageEvent(
                message_id=message_id, contact_id=contact_id, kind=UNSUBSCRIBE, at=utcnow()
            )
        )
