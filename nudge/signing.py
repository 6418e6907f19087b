"""Signatures of the outbound webhooks Nudge sends (activities/outbound.py), Stripe-style.

Every request carries

    X-Nudge-Signature: t=1764012345,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd

where `v1` is the hex HMAC-SHA256, keyed with the shared secret (NUDGE_WEBHOOK_SECRET: a secret
of its own, never NUDGE_SECRET_KEY), of `f"{t}.{raw body}"`: the timestamp in Unix seconds, a dot, and the request
body exactly as received (bytes, before any JSON parsing). A receiver checks it with `verify()`
(or the same three steps in any language):

1. split the header on "," into `key=value` pairs; take `t` and every `v1`;
2. compute HMAC-SHA256(secret, f"{t}.".encode() + body) as lowercase hex and compare it with
   each `v1` in constant time (`hmac.compare_digest`);
3. reject a `t` more than a few minutes away from now (default 300 s): a captured request
   cannot be replayed later.

The timestamp is signed, so it cannot be moved; the body is signed as bytes, so re-serialising
the parsed JSON would not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SCHEME = "v1"
# How far a signature's timestamp may be from the receiver's clock (replay protection).
DEFAULT_TOLERANCE = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `f"{timestamp}.{body}"` keyed with `secret`."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Nudge-Signature` header value for `body`: "t=<unix seconds>,v1=<hex>"."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"t={stamp},{SCHEME}={signature(secret, stamp, body)}"


def verify(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether `header` (X-Nudge-Signature) signs `body` with `secret`, with a timestamp no more
    than `tolerance` seconds from `now` (the current time by default). Never raises on a
    malformed header: anything unreadable is simply not a valid signature."""
    if not header:
        return False
    stamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                stamp = int(value)
            except ValueError:
                return False
        elif key == SCHEME:
            candidates.append(value)
    if stamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        return False
    expected = signature(secret, stamp, body)
    # Every candidate is compared (no early exit), so timing says nothing about which matched.
    matches = [hmac.compare_digest(expected, value) for value in candidates]
    return any(matches)
