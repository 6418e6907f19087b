"""Nudge's operator commands, run once per release (not by every replica at start):

    python -m nudge.journeys.admin migrate              # the database to the latest schema
    python -m nudge.journeys.admin search-attributes    # register them on the namespace
    python -m nudge.journeys.admin search-attributes --check   # only name the missing ones

Both use the settings and the Temporal connection of the API and the worker
(nudge/journeys/connection.py). Registering is idempotent. On Temporal Cloud, namespaces get
their search attributes from `tcld` (README "Production"); `--check` works there too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client

from nudge.journeys import search_attributes
from nudge.journeys.connection import TemporalConnectionError, connect
from nudge.settings import Settings, get_settings
from nudge.storage.db import migrate

#: Every Nudge search attribute, by name, with its Temporal type (all keywords).
REQUIRED: dict[str, int] = {
    key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in search_attributes.ALL
}


class SearchAttributesMissing(RuntimeError):
    """The namespace lacks search attributes Nudge's journeys carry."""


def _type_name(value: int) -> str:
    return IndexedValueType.Name(value).removeprefix("INDEXED_VALUE_TYPE_").title()  # type: ignore[arg-type]


async def missing_search_attributes(client: Client) -> list[str]:
    """Nudge's search attributes the client's namespace does not have (as `Name (Type)`);
    one registered with another type counts as missing, named with the type it has."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    have = dict(listed.custom_attributes)
    missing = []
    for name, kind in REQUIRED.items():
        if name not in have:
            missing.append(f"{name} ({_type_name(kind)})")
        elif have[name] != kind:
            missing.append(f"{name} ({_type_name(kind)}, registered as {_type_name(have[name])})")
    return missing


async def require_search_attributes(client: Client) -> None:
    """Fail, naming each one, if the namespace lacks any: the worker's start check, so a new
    cluster fails at once rather than on its first journey."""
    missing = await missing_search_attributes(client)
    if missing:
        raise SearchAttributesMissing(
            f"Temporal namespace {client.namespace!r} lacks Nudge's search attributes: "
            f"{', '.join(missing)}. Register them with "
            "`python -m nudge.journeys.admin search-attributes` "
            '(Temporal Cloud: `tcld namespace search-attributes add`, README "Production").'
        )


async def register_search_attributes(client: Client) -> list[str]:
    """Register those the namespace lacks; returns their names (none: nothing to do). One
    registered with another type is an error: renaming or removing it is the operator's call."""
    missing = await missing_search_attributes(client)
    clash = [entry for entry in missing if "registered as" in entry]
    if clash:
        raise SearchAttributesMissing(
            f"namespace {client.namespace!r} has search attributes of the wrong type: "
            f"{', '.join(clash)}"
        )
    names = [entry.split(" ", 1)[0] for entry in missing]
    if names:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: REQUIRED[name] for name in names},  # type: ignore[misc]
            )
        )
    return names


async def _search_attributes(settings: Settings, check: bool) -> int:
    client = await connect(settings)
    if check:
        missing = await missing_search_attributes(client)
        for entry in missing:
            print(f"missing: {entry}")
        print(f"namespace {client.namespace!r}: " + ("incomplete" if missing else "complete"))
        return 1 if missing else 0
    added = await register_search_attributes(client)
    print(
        f"namespace {client.namespace!r}: registered {', '.join(added)}"
        if added
        else f"namespace {client.namespace!r}: every search attribute already registered"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nudge.journeys.admin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="upgrade the database (NUDGE_DATABASE_URL) to head")
    attributes = commands.add_parser(
        "search-attributes", help="register Nudge's search attributes on the namespace"
    )
    attributes.add_argument("--check", action="store_true", help="only list the missing ones")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.command == "migrate":
            migrate(settings.database_url)
            print("database at the latest schema")
            return 0
        return asyncio.run(_search_attributes(settings, args.check))
    except (TemporalConnectionError, SearchAttributesMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
