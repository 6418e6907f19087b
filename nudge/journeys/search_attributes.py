"""The search attributes every journey carries, so operators find journeys in the Temporal UI:
`NudgeFlow="winback"`, `NudgeContact="42"` (a contact id, never an email: no personal data in
Temporal), `NudgeStep`, `NudgeStatus`."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from nudge.journeys.contracts import JourneyStatus

FLOW = SearchAttributeKey.for_keyword("NudgeFlow")
CONTACT = SearchAttributeKey.for_keyword("NudgeContact")
STEP = SearchAttributeKey.for_keyword("NudgeStep")
STATUS = SearchAttributeKey.for_keyword("NudgeStatus")
#: Every custom search attribute (all keywords): what a namespace must have registered.
#: `nudge.dev.temporal_dev` lists them again for the dev server, standard library only.
ALL = (FLOW, CONTACT, STEP, STATUS)


def start_search_attributes(flow: str, contact_id: int) -> TypedSearchAttributes:
    """The attributes a journey is started with, so it is findable before its first step."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(FLOW, flow),
            SearchAttributePair(CONTACT, str(contact_id)),
            SearchAttributePair(STEP, "started"),
            SearchAttributePair(STATUS, JourneyStatus.RUNNING.value),
        ]
    )
