"""JSON from untrusted bodies, bounded in nesting: `loads` raises ValueError (as `json.loads` does
for bad JSON) for a document nested deeper than `MAX_DEPTH`, so that 100,000 `[` is a clear 422,
never a `RecursionError` in the parser, in pydantic or in code that walks the result."""

from __future__ import annotations

import json
from typing import Any

#: No body Nudge accepts nests deeper than this (a segment definition is at most 8 conditions
#: deep, about 20 levels of JSON; an event about 6).
MAX_DEPTH = 64


class TooDeep(ValueError):
    """A document nested deeper than allowed."""


def loads(body: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in `body`; ValueError if it is not JSON or nests deeper than
    `max_depth` (arrays and objects)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise TooDeep(f"the JSON nests more than {max_depth} deep") from None
    check_depth(data, max_depth)
    return data


def check_depth(data: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise TooDeep if `data` (parsed JSON) nests arrays and objects deeper than `max_depth`;
    iterative, so any depth is measured without recursion."""
    todo: list[tuple[Any, int]] = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise TooDeep(f"the JSON nests more than {max_depth} deep")
        todo.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
