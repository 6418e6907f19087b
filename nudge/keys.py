"""One key per purpose, derived from `NUDGE_SECRET_KEY`; the key ring that verifies during a rotation.

`NUDGE_SECRET_KEY` itself signs nothing. Each purpose gets its own 32-byte key, HKDF-SHA256
(RFC 5869, from `cryptography`) of the secret with the purpose's label as `info`:

  - `unsubscribe`: the preference and one-click unsubscribe links (`/u/`, `/p/`);
  - `confirm`: the double opt-in confirmation link (`/c/`);
  - `open`, `click`: the open pixel and the click redirect (`/t/o/`, `/t/c/`);
  - `dashboard`: the dashboard's sessions (api/sessions.py).

So knowing one purpose's key (or a token of it) says nothing about another's, and a token of one
purpose never verifies as another. Outbound webhooks are not in this list on purpose: their
receivers hold the key they verify with, so it is a secret of its own (`NUDGE_WEBHOOK_SECRET`).

Verification accepts, in this order: the current secret's derived key, the previous secret's
(`NUDGE_SECRET_KEY_PREVIOUS`, during a rotation), then the *legacy* form of each, the raw secret
itself, which signed every link before keys were derived: links in emails already sent keep
working. New tokens always use the current secret's derived key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nudge.settings import Settings

UNSUBSCRIBE = "unsubscribe"
CONFIRM = "confirm"
OPEN = "open"
CLICK = "click"
DASHBOARD = "dashboard"
PURPOSES = (UNSUBSCRIBE, CONFIRM, OPEN, CLICK, DASHBOARD)

# The HKDF salt: fixed, so the same secret always derives the same keys (RFC 5869 allows it).
SALT = b"nudge/keys/v1"


@lru_cache(maxsize=64)
def derive(secret: str, purpose: str) -> bytes:
    """The 32-byte key of `purpose` under `secret`."""
    if purpose not in PURPOSES:
        raise ValueError(f"no key purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=purpose.encode())
    return hkdf.derive(secret.encode())


@dataclass(frozen=True, slots=True)
class Keyring:
    """The current secret and, during a rotation, the previous one."""

    secret: str
    previous: str | None = None

    def signing_key(self, purpose: str) -> bytes:
        """The key new tokens of `purpose` are signed with."""
        return derive(self.secret, purpose)

    def verifying_keys(self, purpose: str) -> tuple[bytes, ...]:
        """Every key a token of `purpose` may carry, the signing key first."""
        secrets = [self.secret] + ([self.previous] if self.previous else [])
        derived = [derive(secret, purpose) for secret in secrets]
        legacy = [secret.encode() for secret in secrets]
        return (*derived, *legacy)


def keyring(settings: Settings) -> Keyring:
    return Keyring(settings.secret_key, settings.secret_key_previous or None)
