"""Journeys: what the API, the workflows and the activities pass each other (`contracts`), the
routing of events onto journeys (`routing`), the journeys' rows (`records`), the Temporal
connection (`connection`) and the search attributes operators query (`search_attributes`).

Flows import the contracts as `from nudge.journeys import JourneyInput, JourneyState` (the
README's example), so the package re-exports them; importing it stays free of I/O, as workflow
code requires.
"""

from nudge.journeys.contracts import *  # noqa: F403
from nudge.journeys.contracts import __all__ as __all__
