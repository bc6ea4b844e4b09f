"""What a call gets back from the limiter, as the gateway sees it: a `Grant`, `Refused`
or `LimiterUnavailable`; and what it may bring: `Patience`, a wait it may raise while it
queues. `Lateness` measures how late a grant arrived, without comparing two clocks."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from limiter.protocol.events import DecisionMessage, ShadowRefusal


class Asker(Protocol):
    """Who asks: the key a call came with (limiter/gateway/keys.py KeyInfo)."""

    @property
    def key_id(self) -> str: ...

    @property
    def account_id(self) -> str: ...

    @property
    def config_version(self) -> int: ...


class LimiterUnavailable(Exception):
    """The limiter did not answer in time."""


class Refused(Exception):
    """The limiter refused the ticket; `decision` says why and when to try again."""

    def __init__(self, decision: DecisionMessage) -> None:
        super().__init__(decision["reason"])
        self.decision = decision


@dataclass(frozen=True, slots=True)
class Grant:
    lease: str
    waited: float
    limit: int
    remaining: int
    reset: float
    age: float = 0.0  # seconds the answer spent travelling (the round trip beyond its queueing)
    budgeted: bool = False  # a budget counts this call: report its usage (report_usage)
    # How long the ticket could have queued (its key's max wait, or its own); None when
    # the limiter did not say (failure mode "open").
    max_wait: float | None = None
    # The budget reservation the call holds (its ticket id; "" for none): its usage report
    # settles it, and a grant handed back unused settles it at 0 (`unreserve`).
    reservation: str = ""
    # The shadow limits and budgets that would have refused this call (to be recorded).
    shadow: tuple[ShadowRefusal, ...] = ()
    waited_on: str = ""  # the rule it queued on (events' reason codes), when it queued

    @classmethod
    def of(cls, decision: DecisionMessage, age: float) -> Grant:
        return cls(
            decision["lease"],
            decision["waited"],
            decision["limit"],
            decision["remaining"],
            decision["reset"],
            age=age,
            budgeted=bool(decision.get("budgeted")),
            max_wait=decision.get("max_wait"),
            reservation=decision.get("reservation", ""),
            shadow=tuple(decision.get("shadow", ())),
            waited_on=decision.get("rule", ""),
        )


class Patience:
    """How long a ticket may queue when its asker may raise that while it waits: a merged
    embeddings request waits as long as its most patient caller allows, and callers keep
    joining it (limiter/gateway/coalesce.py). Times are this process's monotonic clock.

    The ticket session fills in the ticket it sent and when; `extend` tells the limiter a
    later deadline (events.EXTEND). `queued` is set once the limiter has queued the
    ticket, with its projected wait: before that the ticket has not been decided, so no
    caller's wait is over yet."""

    def __init__(self, until: float) -> None:
        self.until = until
        self.ticket = ""
        self.asked = 0.0
        self.projected = 0.0  # the limiter's projected wait when it queued the ticket
        self.queued = asyncio.Event()
        self._tell: Callable[[str, float], None] | None = None  # (ticket, max_wait)

    def asking(self, asked: float, tell: Callable[[str, float], None]) -> None:
        """A ticket is about to be sent at `asked`; `tell` carries later deadlines."""
        self.ticket, self.asked, self._tell = "", asked, tell

    def max_wait(self) -> float:
        """Seconds from the ask to the deadline (what the limiter counts from arrival)."""
        return max(0.0, self.until - self.asked)

    def extend(self, until: float) -> None:
        if until <= self.until:
            return
        self.until = until
        if self.ticket and self._tell is not None:
            self._tell(self.ticket, self.max_wait())


class Lateness:
    """How late the limiter's answers arrive, without comparing two hosts' clocks.

    Each decision carries the limiter's monotonic time `at`. Here, `now - at` is the
    delivery delay plus an unknown, constant offset between the two clocks; the smallest
    value seen lately is the offset plus the fastest delivery. A decision's lateness is
    how much slower than that it came: a grant used that late would reach Together
    bunched with the grants after it. Time a ticket spent waiting for the limiter to read
    it is not lateness (the limiter decided after it), nor is time queued for a grant.
    The minimum is kept over two windows, so a drifting clock is followed.
    """

    WINDOW = 30.0

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._best = self._previous = math.inf
        self._since: float | None = None
        self._limiter = ""

    def age(self, now: float, at: float, limiter: str = "") -> float:
        if limiter != self._limiter:  # another limiter instance: another clock
            self.reset()
            self._limiter = limiter
        delta = now - at
        if self._since is None or now - self._since > self.WINDOW:
            self._previous, self._best, self._since = self._best, math.inf, now
        self._best = min(self._best, delta)
        return max(0.0, delta - min(self._best, self._previous))
