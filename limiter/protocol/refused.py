"""Refusals known in advance: the web process's cache of "refused until T".

When the limiter refuses a ticket and can prove that every call of that key to the same
endpoint and model will be refused for a while (limiter/authority/engine.py
`Engine.refused_for`: the key's bucket has no room before then, or its account is paused,
and the key may not queue that long), its refusal says for how long (`refused_for`).
`KnownRefusals` keeps that here, and until then the call is refused in this process with
the limiter's answer, its Retry-After and reset counted down: the limiter hears nothing.

A promise only ever ends early, never late:
- it is counted from when the ticket was *sent* (the decision came later, so the
  limiter's T is no earlier than this process's `sent + refused_for`);
- a configuration change (a limit, a key, a team, an account) clears every entry at once,
  as the caches in changes.py are, and so does a limiter's start (a restarted limiter
  forgets upstream pauses); a refusal whose ticket was sent before the last clear is
  not kept (it was decided under what the clear threw away);
- only plain calls learn and use it: one whole ticket (CHARGE_BOTH) at its key's own
  max wait. A merged embeddings request, or a retry after Together's 429, asks the limiter.

Bounded: at most `max_entries` keys; a full cache drops what has expired, then its oldest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from limiter.protocol import events
from limiter.protocol.events import DecisionMessage

# (key id, endpoint, model): the calls one promise covers.
RefusalKey = tuple[str, str, str]

MAX_ENTRIES = 4096

# Refusals that are no rate limit (an estimate out of range) are never promised on.
NOT_KEPT = frozenset({events.INVALID_UNITS})


@dataclass(frozen=True, slots=True)
class KnownRefusal:
    until: float  # this process's monotonic clock
    answered_at: float  # when the ticket was sent (the moment its figures count from)
    decision: DecisionMessage

    def answer(self, now: float) -> DecisionMessage:
        """The limiter's refusal as it stands at `now`: Retry-After and reset counted down
        (never below what is left of the promise: the engine says no earlier retry)."""
        elapsed = now - self.answered_at
        decision = self.decision
        answer = decision.copy()
        answer["retry_after"] = max(decision["retry_after"] - elapsed, self.until - now, 0.001)
        answer["reset"] = max(decision["reset"] - elapsed, 0.0)
        return answer


class KnownRefusals:
    """This process's promises of refusal (one per key, endpoint and model)."""

    def __init__(self, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[RefusalKey, KnownRefusal] = {}
        # Bumped by every clear: a refusal to a ticket sent before it is not kept.
        self.generation = 0
        self.answered = 0  # calls refused here, without the limiter (for tests and bench)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every promise (a configuration change, a limiter's start)."""
        self.generation += 1
        self._entries.clear()

    def learn(
        self, key: RefusalKey, decision: DecisionMessage, sent_at: float, generation: int
    ) -> None:
        """Keep the promise a refusal carries, if it carries one. `sent_at` and
        `generation`: when the ticket was sent, and the generation then."""
        refused_for = decision.get("refused_for", 0.0)
        if (
            generation != self.generation
            or not isinstance(refused_for, float | int)
            or not refused_for > 0
            or decision["reason"] in NOT_KEPT
        ):
            return
        until = sent_at + min(float(refused_for), 3600.0)
        if until <= self.clock():
            return
        if key not in self._entries and len(self._entries) >= self.max_entries:
            self._make_room()
        self._entries[key] = KnownRefusal(until, sent_at, decision)

    def check(self, key: RefusalKey) -> DecisionMessage | None:
        """The refusal for a call now, if one is promised; None: ask the limiter."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.until:
            self._entries.pop(key, None)
            return None
        self.answered += 1
        return entry.answer(now)

    def _make_room(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if e.until <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest learned
