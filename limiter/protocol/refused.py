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

A key that keeps coming back is held (SLUICE_REFUSAL_HOLD). A closed-loop flood sends its
next call as soon as its 429 arrives, so a cheaper refusal only lets it send more: the
event loop every other team's calls share is what it spends. So past the first
`HOLD_AFTER` local answers of one promise (the calls a well-behaved client had in
flight when it was told, or a fallback to another model, are answered at once), a
refusal is answered after `min(T - now, hold)`: the flood waits instead of spinning.
The hold changes when, never what: the answer is computed when it is sent (Retry-After
and reset counted down to then), and it never outlasts the promise, so no call that
could have been admitted waits. Bounded: `HOLD_PER_KEY` held calls a key,
`HOLD_PER_PROCESS` in all; past that, at once. A clear wakes every held call to be asked
again of the limiter (its promise is void: the new configuration decides); a drain
(`stop_holding`) wakes them to be answered at once.

A held key's herd asks once (`turn`, `leave`). Held calls are all answered at T, so a
closed-loop flood sends again all at once, when no promise is in place yet: each of its
calls would ask the limiter (a round trip and about 0.9 ms of its CPU) for the same
answer. So while a key is flooding (held within the last `HERD_WINDOW` seconds), one
plain call of it asks at a time and the others wait for its outcome, at most
`HERD_WAIT`: refused with a promise, they are refused from it here (counted toward the
hold as any local answer); otherwise (granted, refused without a promise, gone) the next
waiter asks, one at a time, since a flooding key's room at T is about one call, so
the second ask is mostly refused with the next promise. A waiter past its wait asks
beside the asker. Only a flooding key waits: a key never held never does, so a team's
parallel calls within its limits never queue behind each other here. Nothing is refused
but from a promise the limiter gave; a clear (or a drain) releases every waiter to ask.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from limiter.protocol import events
from limiter.protocol.events import DecisionMessage

# (key id, endpoint, model): the calls one promise covers.
RefusalKey = tuple[str, str, str]

MAX_ENTRIES = 4096

# Refusals that are no rate limit (an estimate out of range) are never promised on.
NOT_KEPT = frozenset({events.INVALID_UNITS})

# The local answers of one promise given at once before its key is held: up to 8 calls in
# flight when the first refusal came back (one client's parallel batch) are told at once;
# a ninth means a caller comes back instead of honouring Retry-After. Per process.
HOLD_AFTER = 8
# Held calls at once, a key's and this process's. Each is an open connection and its
# request (a few kB for a chat call): 1,024 are a few MB. A key may fill an eighth, so
# eight floods are held at once; the bench's 48 closed-loop workers fit in one key's.
# Past either, the refusal goes at once (memory stays bounded in a 2,000 calls/s storm).
HOLD_PER_KEY = 128
HOLD_PER_PROCESS = 1024
# A key held within this many seconds is flooding: its herd asks one call at a time. Its
# held calls come back at least once a hold (1 s by default), so a flood stays marked; a
# key that calmed down is free of the turn within seconds (its waits are bounded anyway).
HERD_WINDOW = 5.0
# The longest a waiter waits for another call's ask (and no longer than the limiter's
# answer timeout: limiter/protocol/client.py). A refused ask is answered in a few ms (the
# limiter decides in 0.1-0.5 ms; the round trip over the channel layer is most of it), so
# the waiters behind one or two asks are answered well within it; one asked of a stalled
# or queueing limiter lets them ask themselves after a tenth of the hold.
HERD_WAIT = 0.1
# Waiters on one key's ask at once; past that a call asks (the herd of a 2,000 calls/s
# storm is bounded as its held calls are).
HERD_PER_KEY = HOLD_PER_KEY

# A plain call's place in its key's herd (Turn.state).
ASK = "ask"  # ask the limiter (holding the key's turn if `Turn.owner`)
WAIT = "wait"  # another call of the key is asking: wait for its outcome
PROMISED = "promised"  # that ask was refused with a promise: be refused from it


@dataclass(slots=True, eq=False)
class KnownRefusal:
    until: float  # this process's monotonic clock
    answered_at: float  # when the ticket was sent (the moment its figures count from)
    decision: DecisionMessage
    answered: int = 0  # calls refused here on this promise

    def answer(self, now: float) -> DecisionMessage:
        """The limiter's refusal as it stands at `now`: Retry-After and reset counted down
        (never below what is left of the promise: the engine says no earlier retry)."""
        elapsed = now - self.answered_at
        decision = self.decision
        answer = decision.copy()
        answer["retry_after"] = max(decision["retry_after"] - elapsed, self.until - now, 0.001)
        answer["reset"] = max(decision["reset"] - elapsed, 0.0)
        return answer


@dataclass(slots=True, eq=False)
class LocalRefusal:
    """One call refused here: its answer now, and how long to hold it first (0: at once).
    A held call's waiter sets `wake`; a clear or a drain calls it."""

    where: RefusalKey
    promise: KnownRefusal
    decision: DecisionMessage  # the answer at the moment it was decided
    hold: float
    generation: int
    wake: Callable[[], None] | None = field(default=None, repr=False)

    def answer(self, now: float) -> DecisionMessage:
        """The answer to send at `now` (after a hold: its figures counted down to then)."""
        return self.promise.answer(now) if self.hold else self.decision


@dataclass(slots=True, eq=False)
class Turn:
    """One plain call of a flooding key about to ask the limiter (`KnownRefusals.turn`).
    A waiter's `wake` is set by its await; `leave` when the call is done with it."""

    where: RefusalKey
    state: str  # ASK, WAIT or PROMISED
    deadline: float  # a waiter's last moment to wait (this process's monotonic clock)
    owner: bool = False  # the call whose ask the key's other calls wait on
    wake: Callable[[], None] | None = field(default=None, repr=False)


@dataclass(slots=True, eq=False)
class _Herd:
    owner: Turn
    waiting: deque[Turn] = field(default_factory=deque)


class PromisedRefusal(Exception):
    """A flooding key's call waited on another's ask, refused with a promise: the call
    is refused from it here (`refusal`: held or at once, as `KnownRefusals.refuse` says)."""

    def __init__(self, refusal: LocalRefusal) -> None:
        super().__init__(refusal.decision["reason"])
        self.refusal = refusal


class KnownRefusals:
    """This process's promises of refusal (one per key, endpoint and model)."""

    def __init__(self, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[RefusalKey, KnownRefusal] = {}
        # Bumped by every clear: a refusal to a ticket sent before it is not kept.
        self.generation = 0
        self.answered = 0  # calls refused here, without the limiter (for tests and bench)
        # Calls held now (every one, and how many of each key's); no new hold once draining.
        self._held: set[LocalRefusal] = set()
        self._held_of: dict[str, int] = {}
        self.holding = True
        # Flooding keys (when one of their calls was last held) and their asks in flight.
        self._flooding: dict[RefusalKey, float] = {}
        self._herds: dict[RefusalKey, _Herd] = {}
        self.waits = 0  # calls that waited on another call's ask (for tests and bench)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held(self) -> int:
        return len(self._held)

    def clear(self) -> None:
        """Forget every promise (a configuration change, a limiter's start), and wake
        the calls held on them: they are asked again (`released` says so)."""
        self.generation += 1
        self._entries.clear()
        self._flooding.clear()  # the new configuration may well admit them
        self._wake_all()

    def stop_holding(self) -> None:
        """The process drains: answer every held call now, and hold no more (nor wait
        on another call's ask: its waiters ask)."""
        self.holding = False
        self._wake_all()

    def _wake_all(self) -> None:
        for held in list(self._held):
            if held.wake is not None:
                held.wake()
        herds, self._herds = list(self._herds.values()), {}
        for herd in herds:  # their owners' `leave` finds no herd: a no-op
            for waiter in herd.waiting:
                _wake(waiter, ASK)

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

    def refuse(self, key: RefusalKey, hold: float = 0.0) -> LocalRefusal | None:
        """The refusal for a call now, if one is promised, and how long to hold it (up
        to `hold` seconds; see the module's docstring); None: ask the limiter. A held
        refusal counts as held until `released`."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.until:
            self._entries.pop(key, None)
            return None
        self.answered += 1
        entry.answered += 1
        held = self._hold_for(key[0], entry, now, hold)
        refusal = LocalRefusal(key, entry, entry.answer(now), held, self.generation)
        if held:
            self._held.add(refusal)
            self._held_of[key[0]] = self._held_of.get(key[0], 0) + 1
            self._mark_flooding(key, now)
        return refusal

    def _mark_flooding(self, key: RefusalKey, now: float) -> None:
        if key not in self._flooding and len(self._flooding) >= self.max_entries:
            for old in [k for k, t in self._flooding.items() if now - t > HERD_WINDOW]:
                del self._flooding[old]
            if len(self._flooding) >= self.max_entries:
                del self._flooding[next(iter(self._flooding))]
        self._flooding.pop(key, None)  # moved to the end: the oldest go first
        self._flooding[key] = now

    # --- a flooding key's herd: one ask at a time -------------------------------------
    def turn(self, key: RefusalKey, wait: float) -> Turn | None:
        """A plain call is about to ask the limiter. None: its key is not flooding, ask;
        a Turn in PROMISED: a promise is in place (another call's ask brought it since
        this call checked), be refused from it; in ASK: ask, others wait on it; in WAIT:
        wait up to `wait` seconds for `wake`, then see `waited`. `leave` a Turn after."""
        now = self.clock()
        marked = self._flooding.get(key)
        if marked is None or wait <= 0 or not self.holding:
            return None
        if now - marked > HERD_WINDOW:
            del self._flooding[key]
            return None
        if self._promised(key):
            # It checked before its herd's ask was answered, and comes to ask after.
            return Turn(key, PROMISED, now)
        herd = self._herds.get(key)
        if herd is None:
            owner = Turn(key, ASK, now, owner=True)
            self._herds[key] = _Herd(owner)
            return owner
        if len(herd.waiting) >= HERD_PER_KEY:
            return None
        waiter = Turn(key, WAIT, now + wait)
        herd.waiting.append(waiter)
        self.waits += 1
        return waiter

    def waited(self, turn: Turn) -> str:
        """A waiter's wait is over (woken, or past its deadline): PROMISED (be refused
        from the promise now in place, if `refuse` finds it) or ASK (it may hold the
        key's turn now). One that was not woken leaves the queue and asks beside."""
        if turn.state == WAIT:
            self._unqueue(turn)
            turn.state = ASK
        return turn.state

    def leave(self, turn: Turn) -> None:
        """A call is done with its turn (answered, refused, or gone). The owner's ask is
        over: a promise now in place wakes every waiter to be refused from it; else the
        next waiter asks. A waiter that goes away leaves the queue."""
        herd = self._herds.get(turn.where)
        if herd is None:
            return  # cleared meanwhile: its waiters were released
        if herd.owner is not turn:
            self._unqueue(turn)
            return
        if self._promised(turn.where):
            del self._herds[turn.where]
            for waiter in herd.waiting:
                _wake(waiter, PROMISED)
        elif herd.waiting:
            herd.owner = herd.waiting.popleft()
            herd.owner.owner = True
            _wake(herd.owner, ASK)
        else:
            del self._herds[turn.where]

    def _unqueue(self, turn: Turn) -> None:
        herd = self._herds.get(turn.where)
        if herd is not None and turn in herd.waiting:
            herd.waiting.remove(turn)

    def _promised(self, key: RefusalKey) -> bool:
        entry = self._entries.get(key)
        return entry is not None and self.clock() < entry.until

    def _hold_for(self, key_id: str, entry: KnownRefusal, now: float, hold: float) -> float:
        # A key that keeps coming back waits, within bounds, never past its promise.
        if (
            hold <= 0
            or not self.holding
            or entry.answered <= HOLD_AFTER
            or len(self._held) >= HOLD_PER_PROCESS
            or self._held_of.get(key_id, 0) >= HOLD_PER_KEY
        ):
            return 0.0
        return min(entry.until - now, hold)

    def released(self, refusal: LocalRefusal) -> bool:
        """A held call's hold is over: True if its refusal stands (answer it now), False
        if a clear voided its promise meanwhile (ask the limiter: not answered here)."""
        if refusal in self._held:
            self._held.discard(refusal)
            left = self._held_of[refusal.where[0]] - 1
            if left:
                self._held_of[refusal.where[0]] = left
            else:
                del self._held_of[refusal.where[0]]
        if refusal.generation != self.generation:
            self.answered -= 1
            return False
        return True

    def _make_room(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if e.until <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest learned


def _wake(turn: Turn, state: str) -> None:
    turn.state = state
    if turn.wake is not None:
        turn.wake()
