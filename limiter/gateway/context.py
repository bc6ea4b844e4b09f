"""What a call carries down its steps, built once.

The team API is given, when it is built, how to reach its process's limiter client and
the refusal sink (limiter/serving.py builds it: the gateway imports nothing above it).
Per request it hands the handler those `Handles` on the request; a handler that takes a
grant builds its `CallContext` once (inference: step 1, from the body) and passes it to
admission, forwarding, the answer and the finish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limiter.gateway.keys import KeyInfo
from limiter.gateway.sink import RefusalSink
from limiter.protocol.client import LimiterClient
from limiter.usage.sizing import Size

# This process's limiter client, started (with the process's background parts) on the
# running loop: limiter/serving.py `ensure_started`.
LimiterStarter = Callable[[], Awaitable[LimiterClient]]

NO_SIZE = Size()


@dataclass(frozen=True, slots=True)
class Handles:
    """The process's parts a call uses: its limiter client and its refusal sink."""

    limiter: LimiterClient
    refusals: RefusalSink


@dataclass(frozen=True, slots=True)
class CallContext:
    """One call, as the limiter and the meter see it: whose it is (`key`, `request_id`),
    what it is (`endpoint`, `model`), its size estimated once (`size`), and the handles
    it reports through, and whether admission still has to ask about a promised refusal."""

    key: KeyInfo
    request_id: str
    endpoint: str
    handles: Handles
    model: str = ""
    size: Size = NO_SIZE
    # Whether the limiter's promised refusals were already asked about this call (the
    # inference path asks before it reads the rest of the body: a flood costs no more).
    promise_checked: bool = False
    # False: a call that costs nothing (the code interpreter's sessions list): paced by
    # its key's rate, never refused by a budget (events.AcquireMessage.spends).
    spends: bool = True

    @property
    def limiter(self) -> LimiterClient:
        return self.handles.limiter

    @property
    def refusals(self) -> RefusalSink:
        return self.handles.refusals

    def refused(self, *, reason: str, source: str, retry_after: float, message: str = "") -> None:
        """This call refused (its own 429), to the refusal sink."""
        self.refusals.refused(
            self.key,
            self.request_id,
            self.endpoint,
            self.model,
            reason=reason,
            source=source,
            retry_after=retry_after,
            message=message,
        )
