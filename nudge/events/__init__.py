"""Store events: the public contract of `POST /v1/events` (`schemas`).

Flows import it as `from nudge.events import StoreEventIn, cart_of` (the README's example), so
the package re-exports the schemas. Pure pydantic: passed through the workflow sandbox.
"""

from nudge.events.schemas import *  # noqa: F403
from nudge.events.schemas import __all__ as __all__
