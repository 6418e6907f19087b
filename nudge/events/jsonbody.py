"""JSON from untrusted bodies, bounded in nesting: `loads` raises ValueError (as `json.loads` does
for bad JSON) for a document nested deeper than `MAX_DEPTH`, so that 100,000 `[` is a clear 422,
never a `RecursionError` in the parser, in pydantic or in code that walks the result.

Nor may any text in it hold the NUL character (`\u0000`): PostgreSQL cannot store it in a text
column, so it would be a 500 there and a different string on SQLite. It is refused up front,
naming the field (`products.0.title`)."""

from __future__ import annotations

import json
from typing import Any

#: No body Nudge accepts nests deeper than this (a segment definition is at most 8 conditions
#: deep, about 20 levels of JSON; an event about 6).
MAX_DEPTH = 64


class TooDeep(ValueError):
    """A document nested deeper than allowed."""


class NulInText(ValueError):
    """A key or a string value of the document holds the NUL character."""

    def __init__(self, field: str) -> None:
        self.field = field
        super().__init__(f"{field or 'the body'}: text may not contain the NUL character (\\u0000)")


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
    """Raise TooDeep if `data` (parsed JSON) nests arrays and objects deeper than `max_depth`,
    NulInText if a key or a string in it holds NUL; iterative, so any depth is measured without
    recursion."""
    todo: list[tuple[Any, int, str]] = [(data, 1, "")]
    while todo:
        value, depth, path = todo.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise NulInText(path)
            continue
        if isinstance(value, dict):
            children: list[tuple[Any, str]] = []
            for key, child in value.items():
                name = f"{path}.{key}" if path else str(key)
                if "\x00" in key:
                    raise NulInText(name)
                children.append((child, name))
        elif isinstance(value, list):
            children = [(child, f"{path}.{i}" if path else str(i)) for i, child in enumerate(value)]
        else:
            continue
        if depth > max_depth:
            raise TooDeep(f"the JSON nests more than {max_depth} deep")
        todo.extend(
            (child, depth + 1, name)
            for child, name in children
            if isinstance(child, dict | list | str)
        )
