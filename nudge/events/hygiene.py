"""Address hygiene at the API: an address Nudge would only hurt its reputation by mailing is
refused with a 422 naming the field, before it is stored.

Syntax is checked by email-validator through pydantic's `EmailStr` (no DNS lookup at request
time). On top of it, this module refuses:
- role addresses (`ROLE_LOCAL_PARTS`): they reach a team or a ticket system, not a customer who
  subscribed, and complain or bounce more than anyone (RFC 2142 names most of them);
- reserved example and test domains (`RESERVED_DOMAINS`, RFC 2606 / RFC 6761) and addresses
  with an obviously fake local part such as `test@`.
"""

from __future__ import annotations

ROLE_LOCAL_PARTS = frozenset(
    {
        "abuse",
        "admin",
        "administrator",
        "hostmaster",
        "info",
        "mailer-daemon",
        "no-reply",
        "noc",
        "noreply",
        "do-not-reply",
        "donotreply",
        "postmaster",
        "root",
        "security",
        "webmaster",
    }
)
# example.com/.net/.org are reserved too, but stay accepted: they are what every test, demo
# and benchmark uses, and no mail is ever delivered to them.
RESERVED_DOMAINS = ("invalid", "test", "localhost", "example")
FAKE_LOCAL_PARTS = frozenset({"test", "asdf", "none", "null", "nobody", "fake"})


def check_address(email: str) -> str:
    """Raise ValueError (a 422 at the API) for an address Nudge must not mail."""
    local, _, domain = email.rpartition("@")
    base = local.split("+", 1)[0].lower()
    if base in ROLE_LOCAL_PARTS:
        raise ValueError(
            f"{base}@ is a role address (a team, not a person): use the customer's own address"
        )
    if base in FAKE_LOCAL_PARTS:
        raise ValueError(f"{base}@ is not a real mailbox")
    labels = domain.lower().rstrip(".").split(".")
    if labels[-1] in RESERVED_DOMAINS:
        raise ValueError(f"{domain} is a reserved domain that receives no mail")
    return email
