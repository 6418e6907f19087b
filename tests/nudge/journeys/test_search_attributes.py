"""The dev server registers exactly the search attributes journeys carry: `nudge.dev.temporal_dev`
lists them again (standard library only, it runs before the venv has temporalio)."""

from __future__ import annotations

from temporalio.common import SearchAttributeIndexedValueType

from nudge.dev.temporal_dev import SEARCH_ATTRIBUTES
from nudge.journeys import search_attributes
from nudge.journeys.contracts import JourneyStatus


def test_the_dev_server_registers_every_attribute_a_journey_carries() -> None:
    carried = {key.name: key.indexed_value_type for key in search_attributes.ALL}
    assert set(carried) == set(SEARCH_ATTRIBUTES)
    assert set(carried.values()) == {SearchAttributeIndexedValueType.KEYWORD}
    assert set(SEARCH_ATTRIBUTES.values()) == {"Keyword"}


def test_a_journey_starts_findable_by_flow_and_contact_id() -> None:
    started = search_attributes.start_search_attributes("winback", 42)
    assert started.get(search_attributes.FLOW) == "winback"
    assert started.get(search_attributes.CONTACT) == "42"
    assert started.get(search_attributes.STEP) == "started"
    assert started.get(search_attributes.STATUS) == JourneyStatus.RUNNING.value
