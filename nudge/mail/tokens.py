"""Signed tokens for links that act without a login (one-click unsubscribe).

A token names the contact and the message it was sent in, and carries an HMAC-SHA256 of both
under `NUDGE_SECRET_KEY` and a purpose, so it cannot be forged, nor edited to act on another
contact, nor reused for another purpose.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

UNSUBSCRIBE = "unsubscribe"
# Double opt-in: the confirmation link.
CONFIRM = "confirm"


class InvalidToken(Exception):
    """Forged, altered, truncated or signed for another purpose."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    contact_id: int
    message_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, body: str) -> bytes:
    return hmac.new(secret.encode(), f"{purpose}\x1f{body}".encode(), hashlib.sha256).digest()


def sign(secret: str, purpose: str, claims: TokenClaims) -> str:
    body = _b64(f"{claims.contact_id}\x1f{claims.message_id}".encode())
    return f"{body}.{_b64(_mac(secret, purpose, body))}"


def verify(secret: str, purpose: str, token: str) -> TokenClaims:
    try:
        body, mac = token.split(".")
        if not hmac.compare_digest(_unb64(mac), _mac(secret, purpose, body)):
            raise InvalidToken("bad signature")
        contact_id, message_id = _unb64(body).decode().split("\x1f")
        return TokenClaims(int(contact_id), message_id)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidToken(str(err)) from None
