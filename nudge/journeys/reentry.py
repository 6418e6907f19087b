"""Re-entry rules: whether a contact may start a flow again. Declared by a flow
(`reentry = Reentry.every(days=30)`), checked by the routing service before every start. Pure:
flows import it through the workflow sandbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Reentry:
    """Whether a contact may start a flow again; checked by the API before every start.

    `always()` (the default), `once()` ever, `every(days=N)` (not within N days of the event
    that started the last one), or `per_key()` (once per cart, order, product...)."""

    rule: str = "always"
    days: float = 0

    @classmethod
    def always(cls) -> Reentry:
        return cls()

    @classmethod
    def once(cls) -> Reentry:
        return cls("once")

    @classmethod
    def every(cls, *, days: float) -> Reentry:
        if days <= 0:
            raise ValueError("Reentry.every(days=...) needs days > 0")
        return cls("every", days)

    @classmethod
    def per_key(cls) -> Reentry:
        return cls("per_key")

    def allows(
        self, workflow_id: str, at: datetime, previous: Sequence[tuple[str, datetime]]
    ) -> bool:
        """`previous`: (workflow id, when its trigger occurred) of the contact's earlier journeys
        of this flow."""
        if self.rule == "once":
            return not previous
        if self.rule == "per_key":
            return all(wid != workflow_id for wid, _ in previous)
        if self.rule == "every":
            return all(at - then >= timedelta(days=self.days) for _, then in previous)
        return True
