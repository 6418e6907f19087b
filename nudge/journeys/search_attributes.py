"""The search attributes every journey carries, so operators find journeys in the Temporal UI:
`NudgeFlow="winback"`, `NudgeContact="42"` (a contact id, never an email: no personal data in
Temporal), `NudgeStep`, `NudgeStatus`, and `NudgeInstallation` (the installation's id, so a search
never mixes two Nudge databases sharing a namespace)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from nudge.journeys.contracts import JourneyStatus

FLOW = SearchAttributeKey.for_keyword("NudgeFlow")
CONTACT = SearchAttributeKey.for_keyword("NudgeContact")
STEP = SearchAttributeKey.for_keyword("NudgeStep")
STATUS = SearchAttributeKey.for_keyword("NudgeStatus")
INSTALLATION = SearchAttributeKey.for_keyword("NudgeInstallation")
#: Every custom search attribute (all keywords): what a namespace must have registered.
#: `nudge.dev.temporal_dev` lists them again for the dev server, standard library only.
ALL = (FLOW, CONTACT, STEP, STATUS, INSTALLATION)


def start_search_attributes(
    flow: str, contact_id: int, installation: str | None = None
) -> TypedSearchAttributes:
    """The attributes a journey is started with, so it is findable before its first step."""
    pairs: list[SearchAttributePair[str]] = [
        SearchAttributePair(FLOW, flow),
        SearchAttributePair(CONTACT, str(contact_id)),
        SearchAttributePair(STEP, "started"),
        SearchAttributePair(STATUS, JourneyStatus.RUNNING.value),
    ]
    if installation:
        pairs.append(SearchAttributePair(INSTALLATION, installation))
    return TypedSearchAttributes(pairs)
