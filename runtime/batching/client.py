"""Whether the client of the request being served is still there.

The API sets a check per request (the serving worker knows the connection); the batcher asks
it just before the request's items execute, so work nobody will read is dropped. A context
variable carries it, so no signature between the route and the batcher changes for it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

IsGone = Callable[[], bool]

# None where nothing can tell (in-process calls, TLS, warm-ups at start).
client_gone: ContextVar[IsGone | None] = ContextVar("client_gone", default=None)
