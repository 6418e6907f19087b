"""A/B winners: the probability that each variant of a step is best, and the switch to the winner.

Each variant's rate (clicks, opens or placed orders per delivered message, `NUDGE_AB_METRIC`) gets
a Beta(1 + successes, 1 + failures) posterior, uniform prior; P(best) is the share of Monte Carlo
draws (seeded, so the same numbers always give the same answer) in which the variant's draw is the
highest. When one variant reaches `NUDGE_AB_THRESHOLD` (0.9) and every variant has at least
`NUDGE_AB_MIN_RECIPIENTS` (500) delivered messages, the verdict is recorded in `ab_decisions`
with its numbers, and from then on the send activity sends the winner only.

When it is decided: on sends, each send of a step with variants checks it, at most once every
`NUDGE_AB_CHECK_SECONDS` per step and process (one aggregate over the step's messages), and on
every flow report. A recorded decision is final; delete its row to test again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.analytics import metrics
from nudge.settings import Settings
from nudge.storage.db import insert_for
from nudge.storage.models import AbDecision, Message, utcnow

DRAWS = 20_000
SEED = 7
METRICS = ("click", "open", "order")

# (flow, step) -> monotonic time of the last check in this process.
_checked: dict[tuple[str, str], float] = {}


@dataclass(frozen=True, slots=True)
class Arm:
    variant: str
    trials: int
    successes: int


@dataclass(frozen=True, slots=True)
class Verdict:
    metric: str
    arms: list[Arm]
    probabilities: dict[str, float]
    leader: str | None
    ready: bool  # enough recipients in every variant and a variant past the threshold
    decision: AbDecision | None = None


def probability_best(arms: list[Arm], draws: int = DRAWS, seed: int = SEED) -> dict[str, float]:
    """P(each arm has the highest rate) under independent Beta(1+s, 1+n-s) posteriors."""
    if not arms:
        return {}
    rng = random.Random(seed)
    wins = dict.fromkeys((arm.variant for arm in arms), 0)
    params = [(arm.variant, 1 + arm.successes, 1 + arm.trials - arm.successes) for arm in arms]
    for _ in range(draws):
        best = max(params, key=lambda p: rng.betavariate(p[1], p[2]))
        wins[best[0]] += 1
    return {variant: round(count / draws, 4) for variant, count in wins.items()}


def successes(figures: metrics.Figures, metric: str) -> int:
    return {"click": figures.clicks, "open": figures.opens, "order": figures.converted}[metric]


async def evaluate(
    session: AsyncSession, settings: Settings, flow: str, step: str, *, record: bool = True
) -> Verdict | None:
    """The A/B standing of a step over all its messages (None for a step without variants),
    recording the decision when it is reached and `record` is set."""
    existing = await session.get(AbDecision, (flow, step))
    rows = await metrics.figures(session, settings, flow=flow, step=step, by=("variant",))
    metric = existing.metric if existing else settings.ab_metric
    arms = [
        Arm(str(row.keys["variant"]), row.figures.delivered, successes(row.figures, metric))
        for row in rows
        if row.keys["variant"] is not None
    ]
    if len(arms) < 2:
        return (
            None if existing is None else Verdict(metric, arms, {}, existing.winner, True, existing)
        )
    probabilities = probability_best(arms)
    leader, top = max(probabilities.items(), key=lambda item: item[1])
    ready = top >= settings.ab_threshold and all(
        arm.trials >= settings.ab_min_recipients for arm in arms
    )
    if existing is None and ready and record:
        numbers = {
            arm.variant: {
                "recipients": arm.trials,
                "successes": arm.successes,
                "probability_best": probabilities[arm.variant],
            }
            for arm in arms
        }
        await session.execute(
            insert_for(session, AbDecision)
            .values(
                flow=flow,
                step=step,
                metric=metric,
                winner=leader,
                probability=top,
                numbers=numbers,
                decided_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["flow", "step"])
        )
        existing = await session.get(AbDecision, (flow, step))
    if existing is not None:
        leader = existing.winner
    return Verdict(metric, arms, probabilities, leader, ready or existing is not None, existing)


async def settled_variant(
    session: AsyncSession,
    settings: Settings,
    *,
    flow: str,
    step: str,
    variants: Mapping[str, str],
    message_id: str,
) -> str | None:
    """The variant a step's message must be sent as, or None to keep the workflow's pick: the
    variant its first attempt logged (a retry sends what the log says was sent), else the
    recorded winner once the step has one."""
    if len(variants) < 2:
        return None
    logged = await session.scalar(select(Message.variant).where(Message.message_id == message_id))
    if logged is not None and logged in variants:
        return logged
    decision = await session.get(AbDecision, (flow, step))
    if decision is None and _due(flow, step, settings):
        verdict = await evaluate(session, settings, flow, step)
        decision = verdict.decision if verdict else None
    if decision is not None and decision.winner in variants:
        return decision.winner
    return None


def _due(flow: str, step: str, settings: Settings) -> bool:
    now = time.monotonic()
    last = _checked.get((flow, step))
    if last is not None and now - last < settings.ab_check_seconds:
        return False
    _checked[(flow, step)] = now
    return True
