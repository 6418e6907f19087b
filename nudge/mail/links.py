"""Signed links that act without a login: the one codec of every token in an email.

A token is `<body>.<mac>`, both unpadded URL-safe base64: the body is the token's fields joined
by U+001F, the MAC an HMAC-SHA256 of `f"{purpose}\\x1f{body}"` under the purpose's own key
(nudge/keys.py: derived from `NUDGE_SECRET_KEY`). So a token cannot be forged, nor edited to act
on another contact, nor reused for another purpose. The format is fixed: links in emails already
sent must keep working, so verification also accepts the previous secret's keys
(`NUDGE_SECRET_KEY_PREVIOUS`) and the legacy MAC under the raw secret (links sent before keys
were derived); new tokens always carry the current derived key.

Purposes, each with its own page:
  - `unsubscribe`: contact and message; the footer and `List-Unsubscribe` link (`/u/`, `/p/`);
  - `confirm`: contact and message; the double opt-in confirmation link (`/c/`);
  - `open`: contact and message; the open pixel (`/t/o/`, nudge/mail/tracking.py);
  - `click`: contact, message and URL; the click redirect (`/t/c/`, nudge/mail/tracking.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from nudge import keys
from nudge.keys import CLICK, CONFIRM, OPEN, UNSUBSCRIBE, Keyring
from nudge.settings import Settings

__all__ = ["CLICK", "CONFIRM", "OPEN", "UNSUBSCRIBE", "InvalidToken", "Keyring", "TokenClaims"]

SEPARATOR = "\x1f"


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


def _mac(key: bytes, purpose: str, body: str) -> bytes:
    return hmac.new(key, f"{purpose}{SEPARATOR}{body}".encode(), hashlib.sha256).digest()


def sign_fields(keyring: Keyring, purpose: str, *fields: str) -> str:
    body = _b64(SEPARATOR.join(fields).encode())
    return f"{body}.{_b64(_mac(keyring.signing_key(purpose), purpose, body))}"


def verify_fields(keyring: Keyring, purpose: str, token: str, count: int) -> list[str]:
    """The `count` fields of `token`, signed for `purpose` with any key of the ring; raises
    InvalidToken otherwise."""
    try:
        body, mac = token.split(".")
        given = _unb64(mac)
        # Every key is tried (no early exit): timing says nothing about which one matched.
        matches = [
            hmac.compare_digest(given, _mac(key, purpose, body))
            for key in keyring.verifying_keys(purpose)
        ]
        if not any(matches):
            raise InvalidToken("bad signature")
        fields = _unb64(body).decode().split(SEPARATOR)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidToken(str(err)) from None
    if len(fields) != count:
        raise InvalidToken(f"{len(fields)} fields, not {count}")
    return fields


def sign(keyring: Keyring, purpose: str, claims: TokenClaims) -> str:
    return sign_fields(keyring, purpose, str(claims.contact_id), claims.message_id)


def verify(keyring: Keyring, purpose: str, token: str) -> TokenClaims:
    contact_id, message_id = verify_fields(keyring, purpose, token, 2)
    try:
        return TokenClaims(int(contact_id), message_id)
    except ValueError as err:
        raise InvalidToken(str(err)) from None


def _link(settings: Settings, path: str, purpose: str, contact_id: int, message_id: str) -> str:
    token = sign(keys.keyring(settings), purpose, TokenClaims(contact_id, message_id))
    return f"{settings.public_url.rstrip('/')}/{path}/{token}"


def unsubscribe_url(settings: Settings, contact_id: int, message_id: str) -> str:
    """The footer and `List-Unsubscribe` link: the preference page, one-click unsubscribe."""
    return _link(settings, "u", UNSUBSCRIBE, contact_id, message_id)


def confirm_url(settings: Settings, contact_id: int, message_id: str) -> str:
    """The double opt-in confirmation link."""
    return _link(settings, "c", CONFIRM, contact_id, message_id)
