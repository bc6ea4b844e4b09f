"""Guaranteed shares, priorities and weights in the engine's order of service (issue 21),
with time passed in: nothing here sleeps. The state-machine test
(test_engine_invariants.py) checks the order after every grant of generated histories;
these are the scenarios the issue names, each one worked through."""

import math
from collections import Counter

import pytest

from limiter.authority.engine import (
    ACCOUNT_RATE_LIMITED,
    PRIORITY_WAITING,
    QUEUE_TIMEOUT,
    SHARE_USED_UP,
    Decision,
    Engine,
    Limit,
)
from limiter.authority.sharing import BACKGROUND, CRITICAL, SHARE_WINDOW, STANDARD, Klass

ACCOUNT = ("account", "1", "chat", "m")
# 60 a minute, one at a time: one grant a second.
CEILING = Limit(per_minute=60, burst=1)
PATIENT = Limit(per_minute=60000, burst=1000, queue_depth=1000, max_wait=1000.0)


class Queue:
    """An engine, the keys that call it, and the worker's part: poll at every wakeup."""

    def __init__(self, ceiling: Limit = CEILING) -> None:
        self.engine = Engine()
        self.ceiling = ceiling
        self.now = 0.0
        self.count = 0
        self.granted: list[tuple[float, str]] = []  # (when, key)
        self.decisions: list[Decision] = []

    def ask(self, key: str, klass: Klass, limit: Limit = PATIENT, n: int = 1) -> Decision:
        for _ in range(n):
            self.count += 1
            ticket = f"{key}-{self.count}"
            decisions = self.engine.acquire(
                ticket,
                (("key", key, "chat", ""), limit),
                (ACCOUNT, self.ceiling),
                0,
                self.now,
                klass=klass,
            )
            self._record(decisions)
        return next(d for d in decisions if d.ticket.id == ticket)

    def run(self, until: float) -> None:
        while (wake := self.engine.next_wakeup(self.now)) is not None and wake <= until:
            self.now = max(self.now, wake)
            self._record(self.engine.poll(self.now))
        self.now = until

    def _record(self, decisions: list[Decision]) -> None:
        self.decisions.extend(decisions)
        for d in decisions:
            if d.kind == "grant":
                self.granted.append((self.now, d.ticket.key.id[1]))

    def served(self, since: float = -1.0, until: float = 1e18) -> Counter[str]:
        return Counter(key for at, key in self.granted if since <= at < until)


def test_weights_split_what_is_left_in_proportion():
    q = Queue()
    q.ask("a", Klass("team-a", weight=2.0), n=200)
    q.ask("b", Klass("team-b", weight=1.0), n=200)
    q.run(90.0)
    served = q.served()
    assert served["a"] + served["b"] == 91  # work-conserving: one a second
    assert served["a"] == pytest.approx(2 * served["b"], abs=2)


def test_a_class_below_its_share_goes_first_and_the_rest_is_split_by_weight():
    # Every class floods; prod's service (all of it, borrowed too) counts against its
    # share: it gets its share, plus what it wins competing for the rest.
    q = Queue()
    q.ask("prod", Klass("prod", share=0.6), n=300)
    q.ask("dev", Klass("dev"), n=300)
    q.ask("exp", Klass("exp"), n=300)
    q.run(200.0)
    served = q.served(since=50.0)  # the steady state, the measure's window long past
    total = sum(served.values())
    # At least its share; at most its share and an equal part of what is left.
    assert 0.59 <= served["prod"] / total <= 0.6 + 0.4 / 3
    assert served["dev"] == pytest.approx(served["exp"], abs=2)


def test_an_idle_share_is_lent_and_reclaimed_at_the_next_grant():
    q = Queue()
    q.ask("dev", Klass("dev"), n=100)
    q.run(30.5)
    assert q.served() == Counter(dev=31)  # prod idle: dev has the whole ceiling
    q.ask("prod", Klass("prod", share=0.6))
    q.run(31.0)
    # The next grant (at 31 s, one second after dev's last) is prod's, ahead of dev's
    # 69 queued calls: reclaiming waits for no one's queue.
    assert q.granted[-1] == (31.0, "prod")


def test_background_goes_only_when_no_one_else_waits_and_then_gets_it_all():
    q = Queue()
    q.ask("batch", Klass("batch", priority=BACKGROUND), n=50)
    q.ask("app", Klass("app", priority=STANDARD), n=10)
    q.run(40.0)
    order = [key for _at, key in q.granted]
    # The first grant went before app asked (batch alone); then app's ten, then batch.
    assert order[:11] == ["batch"] + ["app"] * 10
    assert set(order[11:]) == {"batch"}
    assert len(order) == 41  # and batch used every grant app left


def test_a_priority_never_lets_a_key_exceed_its_own_limit():
    q = Queue()
    own = Limit(per_minute=15, burst=1, queue_depth=100, max_wait=1000.0)  # one in 4 s
    q.ask("urgent", Klass("urgent", priority=CRITICAL), limit=own, n=20)
    q.ask("other", Klass("other"), n=100)
    q.run(40.0)
    served = q.served()
    assert served["urgent"] == 11  # at 0, 4, ..., 40: its own pace, no faster
    assert served["urgent"] + served["other"] == 41  # the rest went to the standard key


def test_a_critical_call_goes_before_standard_ones_queued_earlier():
    q = Queue()
    q.ask("other", Klass("other"), n=10)
    q.run(2.5)
    q.ask("urgent", Klass("urgent", priority=CRITICAL))
    q.run(3.0)
    assert q.granted[-1] == (3.0, "urgent")


def test_a_wait_says_which_rule_holds_it():
    q = Queue()
    q.ask("urgent", Klass("urgent", priority=CRITICAL), n=3)
    behind_priority = q.ask("other", Klass("other"))
    assert (behind_priority.kind, behind_priority.reason) == ("queued", PRIORITY_WAITING)
    q.run(20.0)
    q.ask("prod", Klass("prod", share=0.5), n=30)
    q.run(40.0)  # prod alone has been served far beyond half the ceiling
    assert q.engine.groups[ACCOUNT].usage["prod"].read(q.now) > 0.5 * SHARE_WINDOW
    used_up = q.ask("prod", Klass("prod", share=0.5))
    assert (used_up.kind, used_up.reason) == ("queued", SHARE_USED_UP)
    plain = Queue()
    plain.ask("a", Klass("a"), n=2)
    assert plain.ask("b", Klass("b")).reason == ACCOUNT_RATE_LIMITED


def test_a_refusal_for_a_wait_too_long_names_the_priority_waiting():
    q = Queue()
    q.ask("urgent", Klass("urgent", priority=CRITICAL), n=10)
    impatient = Limit(per_minute=60000, burst=1000, queue_depth=10, max_wait=3.0)
    refused = q.ask("other", Klass("other"), limit=impatient)
    assert (refused.kind, refused.reason, refused.scope) == ("refuse", PRIORITY_WAITING, "account")
    # One that may wait but times out says the rule it waited on.
    q.ask("other2", Klass("other2"), limit=Limit(60000, 1000, queue_depth=10, max_wait=30.0))
    q.ask("urgent", Klass("urgent", priority=CRITICAL), n=40)
    q.run(31.0)
    timeout = next(d for d in q.decisions if d.ticket.key.id[1] == "other2" and d.kind != "queued")
    assert (timeout.reason, timeout.rule) == (QUEUE_TIMEOUT, PRIORITY_WAITING)


def test_a_new_configuration_reorders_the_queue_at_once():
    q = Queue()
    q.ask("a", Klass("a"), n=20)
    q.ask("b", Klass("b"), n=20)
    q.run(3.5)
    q.engine.reclassify(
        lambda t: Klass(t.klass.id, priority=CRITICAL if t.klass.id == "b" else STANDARD)
    )
    q.run(10.0)
    assert [key for at, key in q.granted if at > 3.5] == ["b"] * 7  # at 4, 5, ..., 10


def test_bad_numbers_in_a_class_are_bounded_not_trusted():
    q = Queue()
    nan = float("nan")
    first = q.ask("a", Klass("a", share=nan, weight=nan, priority=99), n=3)
    assert first.ticket.klass == Klass("a", 0.0, 1.0, STANDARD)
    q.ask("b", Klass("b", share=-1.0, weight=float("inf")), n=3)
    q.run(10.0)
    assert q.served() == Counter(a=3, b=3)


def test_a_reclaiming_grant_waits_for_the_accounts_bucket_like_any_other():
    # Issue 21's bench saw Together answer 1 429 of 541 with shares on: a reclaiming class
    # (below its share, critical) goes first, but only when the account's bucket lets
    # anyone go. prod arrives half a second after dev's grant, and again at the moment of
    # one: its grants come a full interval after the one before, never sooner. (This holds
    # already: evidence that the 429 was not a grant past the account's pace.)
    q = Queue()
    q.ask("dev", Klass("dev"), n=100)
    q.run(30.5)
    q.ask("prod", Klass("prod", share=0.6, priority=CRITICAL))
    q.run(31.0)
    assert q.granted[-2:] == [(30.0, "dev"), (31.0, "prod")]
    q.run(40.0)
    q.ask("prod", Klass("prod", share=0.6, priority=CRITICAL), n=3)
    q.run(60.0)
    times = [at for at, _key in q.granted]
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 1.0 - 1e-9
    # At 40 s dev's grant went just before prod's three arrived: theirs come at 41, 42, 43.
    assert [(at, key) for at, key in q.granted if 40.0 <= at < 44.0] == [
        (40.0, "dev"),
        (41.0, "prod"),
        (42.0, "prod"),
        (43.0, "prod"),
    ]


def test_a_flow_held_back_by_its_key_lends_its_low_tag_to_no_newcomer():
    # Guarantee 4(c): from when two flows both wait, neither gets more than the other plus
    # one request (by weight). c's flow waits 10 s for its own key while a is served; when
    # c's call finally goes, b arrives: b must start level with a, not at c's low tag (which
    # would give b the next nine grants while a waits).
    q = Queue()
    tight = Limit(per_minute=6, burst=1, queue_depth=5, max_wait=60.0)
    q.ask("c", Klass("c"), limit=tight, n=2)  # the first goes at once, the second in 10 s
    q.ask("a", Klass("a"), n=30)
    q.run(10.0)
    assert q.granted[-1] == (10.0, "c")  # held back by its key until then, the least served
    q.ask("b", Klass("b"), n=30)
    q.run(20.5)
    since = q.served(since=10.5)
    assert abs(since["a"] - since["b"]) <= 1, since


def _bench_scenario(shares: bool, until: float) -> tuple[list[float], list[float]]:
    """bench/shares.py's steady scenario on the pure parts, with the clock passed in: the
    account's ceiling learned from headers stating 5 a second (300 a minute, the profile's
    cap too) and its margin adapting (ceilings.py), the limiter's ramp every half second
    (live.py's round) with demand as scopes.py computes it; prod asks 2.5 a second (60%
    share and critical with `shares`), dev floods at 8 a second, exp asks 100 a minute,
    each evenly spaced, keys patient for 30 s. Returns the grants' moments and the pace at
    each round."""
    from limiter.authority.ceilings import Ceiling

    margin = 0.1
    ceiling = Ceiling.start(Limit(per_minute=300, burst=1))
    patient = Limit(per_minute=1_000_000, burst=1000, queue_depth=1000, max_wait=30.0)
    classes = {
        "prod": Klass("prod", 0.6, priority=CRITICAL) if shares else Klass("prod"),
        "dev": Klass("dev"),
        "exp": Klass("exp"),
    }
    arrivals = sorted(
        (i / rate, name)
        for name, rate in (("prod", 2.5), ("dev", 8.0), ("exp", 100 / 60))
        for i in range(round(rate * until))
    )
    engine, now, grants, paces, next_round = Engine(), 0.0, [], [], 0.5

    def answer(decisions: list[Decision]) -> None:
        for d in decisions:
            if d.kind == "grant":
                grants.append(now)
                # Every answer's headers state the limit; a lower learned pace applies at once.
                if ceiling.observe({"x-ratelimit-limit": "5"}, unit_seconds=1.0, margin=margin):
                    engine.scope(ACCOUNT, ceiling.limit(), now)

    for n, (due, name) in enumerate(arrivals):
        while True:  # the worker's timer and the live view's rounds, up to this arrival
            wake = engine.next_wakeup(now)
            step = min(next_round, wake if wake is not None else math.inf)
            if step > due:
                break
            now = max(now, step)
            if now >= next_round:
                waiting = {t.account.id for t in engine.tickets.values()}
                if ceiling.ramp(now, demand=ACCOUNT in waiting, margin=margin):
                    engine.scope(ACCOUNT, ceiling.limit(), now)
                paces.append(ceiling.pace)
                next_round += 0.5
            answer(engine.poll(now))
        now = due
        key = (("key", name, "chat", ""), patient)
        answer(
            engine.acquire(
                f"{name}-{n}", key, (ACCOUNT, ceiling.limit()), 0, now, klass=classes[name]
            )
        )
    return grants, paces


def test_a_shares_on_queue_uses_the_ceiling_as_fully_as_one_without_shares():
    # Issue 21's bench measured 94.0% of the ceiling with shares on against 97.3% off (the
    # sandbox's cushion). On the pure parts neither the margin's narrowing nor the grants
    # depend on the shares: the queue always has demand, the learned limit binds, and a
    # class served by its share leaves no grant slot idle. What is left of the gap in the
    # bench is the machine's (timers firing late, docs/sharing.md).
    on, paces_on = _bench_scenario(shares=True, until=40.0)
    off, paces_off = _bench_scenario(shares=False, until=40.0)
    assert paces_on == paces_off
    assert max(paces_on) == pytest.approx(300 * 0.98)  # narrowed to 2% under a shares-on queue
    steady_on = sum(1 for at in on if 10.0 <= at < 40.0)
    steady_off = sum(1 for at in off if 10.0 <= at < 40.0)
    assert steady_on == steady_off
    assert steady_on / (5 * 30) >= 0.97  # the bench's 'ceiling use while all wait'
