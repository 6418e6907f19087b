"""Segment definitions as data: validation errors name the condition as the user wrote it, and a
definition survives a round trip through its stored JSON."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from nudge.segments.catalogue import BUILTINS
from nudge.segments.definition import dump, parse, validation_errors

# ---- validation: errors name the condition -------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (
            {
                "all": [
                    {"kind": "orders", "count": {"gte": 3}},
                    {"kind": "orders", "count": {"gte": -1}},
                ]
            },
            "definition.all.1.count.gte",
        ),
        ({"all": [{"kind": "tag", "tag": "a"}, {"kind": "orders"}]}, "definition.all.1"),
        ({"any": [{"nope": 1}]}, "definition.any.0"),
        ({"not": {"kind": "ordrs"}}, "definition.not.kind"),
        ({"not": {"all": []}}, "definition.not.all"),
        ({"kind": "orders", "count": {"gte": 1}, "withn_days": 3}, "definition.withn_days"),
        ({"kind": "orders", "total": {"gt": 500.5}}, "definition.total.gt"),
        ({"kind": "property", "name": "Age", "op": "eq", "value": 1}, "definition.name"),
        ({"kind": "property", "name": "vip", "op": "gt", "value": True}, "definition"),
        ({"kind": "viewed_product", "within_days": 0}, "definition.within_days"),
        ({"kind": "rfm"}, "definition"),
        ({"kind": "consent", "in": ["maybe"]}, "definition.in.0"),
        (
            {
                "all": [
                    {
                        "all": [
                            {
                                "all": [
                                    {
                                        "all": [
                                            {
                                                "all": [
                                                    {
                                                        "all": [
                                                            {
                                                                "all": [
                                                                    {
                                                                        "all": [
                                                                            {
                                                                                "kind": "tag",
                                                                                "tag": "x",
                                                                            }
                                                                        ]
                                                                    }
                                                                ]
                                                            }
                                                        ]
                                                    }
                                                ]
                                            }
                                        ]
                                    }
                                ]
                            }
                        ]
                    }
                ]
            },
            "definition",
        ),
    ],
)
def test_invalid_definitions_name_the_condition(definition: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse(definition)
    assert field in [f["field"] for f in validation_errors(err.value)]


def test_definitions_round_trip() -> None:
    for builtin in BUILTINS:
        condition = parse(builtin.definition)
        assert parse(dump(condition)) == condition
    assert dump(parse({"kind": "orders", "total": {"gte": "500"}})) == {
        "kind": "orders",
        "total": {"gte": "500"},
    }


def test_limits_are_checked_before_the_conditions() -> None:
    """A definition far over the limits is refused for its size alone, not after every one of
    its 125,000 conditions was validated (each error listed)."""
    huge = {"any": [{"any": [{"kind": "tag", "tag": "x"}] * 50}] * 2500}
    with pytest.raises(ValidationError) as caught:
        parse(huge)
    assert validation_errors(caught.value) == [
        {"field": "definition", "message": "Value error, a definition has at most 100 conditions"}
    ]
    deep: Any = {"kind": "tag", "tag": "x"}
    for _ in range(3000):
        deep = {"not": deep}
    with pytest.raises(ValidationError) as caught:
        parse(deep)
    assert [e["message"] for e in validation_errors(caught.value)] == [
        "Value error, conditions nest at most 8 deep"
    ]
