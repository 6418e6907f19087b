"""The report service behind `GET /v1/reports/...` and the dashboard: figures from
nudge/analytics/metrics.py and A/B standings from nudge/analytics/abtest.py, shaped as the API's
response models, and the preview of a flow's emails."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.analytics import abtest, metrics
from nudge.mail import links
from nudge.mail.context import JourneyEmail, email_context
from nudge.mail.render import TemplateProblem, shared_renderer
from nudge.settings import Settings
from nudge.storage.installation import installation_id
from nudge.storage.models import Cart, Contact, Segment


class Metrics(BaseModel):
    sent: int
    delivered: int
    bounced: int
    opens: int = Field(description="Unique human opens (a human click counts as an open)")
    clicks: int = Field(description="Unique human clicks")
    machine_opens: int = Field(description="Messages opened by privacy proxies or scanners")
    machine_clicks: int = Field(description="Messages whose links scanners followed")
    open_rate: float | None = Field(description="opens / delivered")
    click_rate: float | None = Field(description="clicks / delivered")
    click_to_open_rate: float | None = Field(description="clicks / opens")
    conversions: int = Field(description="Attributed orders")
    conversion_rate: float | None = Field(
        description="Messages with an attributed order / delivered"
    )
    revenue: Decimal = Field(description="Total of the attributed orders")
    revenue_per_recipient: Decimal | None = Field(description="revenue / delivered (RPR)")
    unsubscribes: int
    complaints: int

    @classmethod
    def of(cls, f: metrics.Figures) -> Metrics:
        return cls(
            sent=f.sent,
            delivered=f.delivered,
            bounced=f.bounced,
            opens=f.opens,
            clicks=f.clicks,
            machine_opens=f.machine_opens,
            machine_clicks=f.machine_clicks,
            open_rate=f.open_rate,
            click_rate=f.click_rate,
            click_to_open_rate=f.click_to_open_rate,
            conversions=f.conversions,
            conversion_rate=f.conversion_rate,
            revenue=f.revenue,
            revenue_per_recipient=f.revenue_per_recipient,
            unsubscribes=f.unsubscribes,
            complaints=f.complaints,
        )


class Scope(BaseModel):
    start: datetime | None
    end: datetime | None
    segment: str | None


class SegmentRef(BaseModel):
    id: str
    name: str


class FlowSummary(BaseModel):
    flow: str
    metrics: Metrics
    url: str = Field(description="This flow's report")


class Overview(BaseModel):
    scope: Scope
    total: Metrics
    flows: list[FlowSummary]
    segments: list[SegmentRef] = Field(description="Segments a report can be narrowed to")


class FunnelStage(BaseModel):
    stage: Literal["sent", "delivered", "opened", "clicked", "ordered"]
    count: int
    rate: float | None = Field(description="Share of sent")


class Variant(BaseModel):
    variant: str
    metrics: Metrics
    probability_best: float | None = Field(description="P(this variant is best), Beta-Binomial")


class AbVerdict(BaseModel):
    metric: Literal["click", "open", "order"]
    status: Literal["winner", "leading", "undecided"]
    leader: str | None
    probability: float | None
    threshold: float
    min_recipients: int
    decided_at: datetime | None


class Step(BaseModel):
    step: str
    metrics: Metrics
    variants: list[Variant]
    ab: AbVerdict | None


class SeriesPoint(BaseModel):
    day: str = Field(description="UTC day, YYYY-MM-DD, of sending")
    sent: int
    open_rate: float | None
    click_rate: float | None
    conversion_rate: float | None
    revenue: Decimal
    revenue_per_recipient: Decimal | None


class FlowReport(BaseModel):
    flow: str
    scope: Scope
    metrics: Metrics
    funnel: list[FunnelStage]
    steps: list[Step]
    series: list[SeriesPoint]
    journeys_url: str = Field(description="This flow's running journeys in the Temporal UI")
    segments: list[SegmentRef] = Field(description="Segments a report can be narrowed to")


class EmailPreview(BaseModel):
    step: str
    template: str
    subject: str | None
    html: str | None
    text: str | None
    error: str | None = None


async def segments(session: AsyncSession) -> list[SegmentRef]:
    rows = await session.execute(select(Segment.id, Segment.name).order_by(Segment.id))
    return [SegmentRef(id=i, name=n) for i, n in rows.all()]


async def overview(
    session: AsyncSession,
    settings: Settings,
    flows: list[str],
    period: metrics.Period,
    segment: str | None,
) -> Overview:
    names = sorted(set(flows) | set(await metrics.flows_sent(session, period)))
    rows = await metrics.figures(session, settings, period=period, segment=segment, by=("flow",))
    per_flow = {str(row.keys["flow"]): row.figures for row in rows}
    total = await metrics.totals(session, settings, period=period, segment=segment)
    return Overview(
        scope=Scope(start=period.start, end=period.end, segment=segment),
        total=Metrics.of(total),
        flows=[
            FlowSummary(
                flow=name,
                metrics=Metrics.of(per_flow.get(name, metrics.Figures())),
                url=f"/v1/reports/flows/{quote(name)}",
            )
            for name in names
        ],
        segments=await segments(session),
    )


def journeys_url(settings: Settings, flow: str, installation: str | None = None) -> str:
    """This installation's running journeys of `flow` in the Temporal UI (journeys started
    before installation ids carry no NudgeInstallation: `installation=None` finds them)."""
    query = f'NudgeFlow="{flow}" AND ExecutionStatus="Running"'
    if installation:
        query += f' AND NudgeInstallation="{installation}"'
    return (
        f"{settings.temporal_ui_url.rstrip('/')}/namespaces/"
        f"{quote(settings.temporal_namespace)}/workflows?query={quote(query)}"
    )


async def flow_report(
    session: AsyncSession,
    settings: Settings,
    flow: str,
    period: metrics.Period,
    segment: str | None,
) -> FlowReport:
    scope: dict[str, Any] = {"period": period, "segment": segment, "flow": flow}
    total = await metrics.totals(session, settings, **scope)
    steps: list[Step] = []
    by_variant = await metrics.figures(session, settings, by=("step", "variant"), **scope)
    for row in await metrics.figures(session, settings, by=("step",), **scope):
        name = str(row.keys["step"])
        tested = any(v.keys["step"] == name and v.keys["variant"] for v in by_variant)
        # The verdict is over every message of the step, whatever the period shown.
        verdict = await abtest.evaluate(session, settings, flow, name) if tested else None
        probabilities = verdict.probabilities if verdict else {}
        variants = [
            Variant(
                variant=str(v.keys["variant"]),
                metrics=Metrics.of(v.figures),
                probability_best=probabilities.get(str(v.keys["variant"])),
            )
            for v in by_variant
            if v.keys["step"] == name and v.keys["variant"] is not None
        ]
        steps.append(
            Step(
                step=name,
                metrics=Metrics.of(row.figures),
                variants=variants,
                ab=_verdict(verdict, settings) if verdict else None,
            )
        )
    series = [
        SeriesPoint(
            day=str(r.keys["day"]),
            sent=r.figures.sent,
            open_rate=r.figures.open_rate,
            click_rate=r.figures.click_rate,
            conversion_rate=r.figures.conversion_rate,
            revenue=r.figures.revenue,
            revenue_per_recipient=r.figures.revenue_per_recipient,
        )
        for r in await metrics.figures(session, settings, by=("day",), **scope)
    ]
    return FlowReport(
        flow=flow,
        scope=Scope(start=period.start, end=period.end, segment=segment),
        metrics=Metrics.of(total),
        funnel=_funnel(total),
        steps=steps,
        series=series,
        journeys_url=journeys_url(settings, flow, await installation_id(session)),
        segments=await segments(session),
    )


def _verdict(verdict: abtest.Verdict, settings: Settings) -> AbVerdict:
    decision = verdict.decision
    if decision is not None:
        status: Literal["winner", "leading", "undecided"] = "winner"
        probability: float | None = decision.probability
    else:
        probability = verdict.probabilities.get(verdict.leader) if verdict.leader else None
        status = "leading" if probability and probability >= settings.ab_threshold else "undecided"
    return AbVerdict(
        metric=verdict.metric,
        status=status,
        leader=verdict.leader,
        probability=probability,
        threshold=settings.ab_threshold,
        min_recipients=settings.ab_min_recipients,
        decided_at=decision.decided_at if decision else None,
    )


def _funnel(f: metrics.Figures) -> list[FunnelStage]:
    counts = (
        ("sent", f.sent),
        ("delivered", f.delivered),
        ("opened", f.opens),
        ("clicked", f.clicks),
        ("ordered", f.converted),
    )
    return [
        FunnelStage(stage=stage, count=count, rate=metrics._ratio(count, f.sent))
        for stage, count in counts
    ]


async def preview(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    flow: str,
    declared: Sequence[str],
    contact: Contact,
) -> list[EmailPreview]:
    """Every email of `flow` (the templates it declares in `emails`, then every step its log
    has) rendered for `contact` as the send activity would, without tracking. Nothing a render
    writes (a coupon for an `offer`) is kept: the session is rolled back."""
    async with sessions() as session:
        emails = [(name, name) for name in declared]
        emails += [e for e in await metrics.templates_of(session, flow) if e not in emails]
        cart = await session.scalar(
            select(Cart.token)
            .where(Cart.contact_id == contact.id)
            .order_by(Cart.updated_at.desc())
            .limit(1)
        )
        previews = [
            await _preview_one(session, settings, flow, step, template, contact, cart)
            for step, template in emails
        ]
        await session.rollback()
    return previews


async def _preview_one(
    session: AsyncSession,
    settings: Settings,
    flow: str,
    step: str,
    template: str,
    contact: Contact,
    cart: str | None,
) -> EmailPreview:
    """One email, with the context the send activity builds (nudge/mail/context.py) for a
    journey keyed by the contact's latest cart."""
    renderer = shared_renderer()
    mid = f"preview-{step}@{settings.from_domain}"
    journey = JourneyEmail(
        uses=renderer.variables(template),
        key=cart or "preview",
        trigger_event_id="preview",
        offer_source=f"preview-{flow}-{contact.id}:preview:{step}",
    )
    unsubscribe = links.unsubscribe_url(settings, contact.id, mid)
    try:
        context = await email_context(
            session, settings, contact, mid, journey=journey, unsubscribe_url=unsubscribe
        )
        rendered = renderer.render(template, context)
    except TemplateProblem as err:
        return EmailPreview(
            step=step, template=template, subject=None, html=None, text=None, error=str(err)
        )
    return EmailPreview(
        step=step,
        template=template,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
    )
