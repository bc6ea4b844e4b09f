"""How an upstream scope's queue chooses between classes: guaranteed shares, priorities
and weights (the HTB-like discipline of `engine.py`). Pure: no Django, no I/O, no clock.

A class is a team (or a key given a share of its own). On one upstream scope (account x
endpoint x model) a class may hold a guaranteed `share` of the ceiling in force, as a
fraction, so it follows a learned ceiling as it moves; each call has a `priority`
(its key's, defaulting to its team's); each class a `weight` (default 1).

Service is counted in seconds of the account's capacity (a grant's cost: the larger of
one request and its tokens, at the rate in force when it was granted), so a class served
a fraction f of the ceiling accrues f seconds of it a second whatever the ceiling is.
`Usage` keeps it as an exponentially decaying sum with time constant SHARE_WINDOW: in a
steady state it reads f x SHARE_WINDOW, so a class is below its share while it reads
less than share x SHARE_WINDOW. Idle time decays it, so a class that comes back after
a pause is below its share at once: its next call is the next grant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BACKGROUND, STANDARD, CRITICAL = 0, 1, 2
PRIORITIES = {"background": BACKGROUND, "standard": STANDARD, "critical": CRITICAL}
PRIORITY_NAMES = {rank: name for name, rank in PRIORITIES.items()}

# The window service is measured over (the decaying sum's time constant), in seconds.
SHARE_WINDOW = 10.0
# Weights are bounded so that cost / weight stays a finite, meaningful float.
MIN_WEIGHT, MAX_WEIGHT = 0.01, 1000.0
# A usage this small is forgotten (memory follows the classes served recently).
FORGET_BELOW = 1e-9


@dataclass(frozen=True, slots=True)
class Klass:
    """One call's class on its upstream scope. `id` "" is the key's own class (the key is
    its own class, with no share, standard priority and weight 1: the fair queue by key)."""

    id: str = ""
    share: float = 0.0  # 0 < share <= 1: guaranteed; 0: none
    weight: float = 1.0
    priority: int = STANDARD

    def bounded(self) -> Klass:
        """The same class with every number in range (a bad row must not stop the queue)."""
        share_ok = 0.0 <= self.share <= 1.0
        weight_ok = MIN_WEIGHT <= self.weight <= MAX_WEIGHT
        priority_ok = self.priority in PRIORITY_NAMES
        if share_ok and weight_ok and priority_ok:
            return self  # frozen: every ticket of a class may share it
        share = self.share if share_ok else 0.0
        weight = self.weight if weight_ok else 1.0
        priority = self.priority if priority_ok else STANDARD
        return Klass(self.id, share, weight, priority)


DEFAULT_CLASS = Klass()


class Usage:
    """A class's recent service on one upstream scope: a decaying sum of its grants'
    costs (seconds of the account's capacity)."""

    __slots__ = ("value", "at")

    def __init__(self) -> None:
        self.value = 0.0
        self.at = 0.0

    def read(self, now: float) -> float:
        if now <= self.at:
            return self.value
        return self.value * math.exp(-(now - self.at) / SHARE_WINDOW)

    def add(self, cost: float, now: float) -> None:
        self.value = self.read(now) + cost
        self.at = max(self.at, now)

    def fraction(self, now: float) -> float:
        """The share of the ceiling this class has been served lately (0..1, roughly)."""
        return self.read(now) / SHARE_WINDOW


def below_share(usage: Usage | None, share: float, now: float) -> bool:
    """Whether a class with this share has been served less than it lately: its calls
    then go before anyone beyond theirs."""
    if share <= 0:
        return False
    return usage is None or usage.read(now) < share * SHARE_WINDOW


def sharing_state(share: float, use: float, waiting: int) -> str:
    """What a class does with the ceiling now, for the live view: `use` and `share` are
    fractions of the ceiling in force over the share window."""
    if share > 0 and use < share:
        # Below its share: waiting, it goes first (reclaims); idle, the rest is lent.
        return "reclaiming" if waiting else "lending"
    if use > share + 0.005:
        return "borrowing"
    return "within" if use > 0 or waiting else "idle"
