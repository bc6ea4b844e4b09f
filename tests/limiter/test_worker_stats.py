"""The worker's per-scope statistics follow the engine's scopes: forgotten scopes leave
nothing behind."""

from limiter.authority.engine import Engine, Limit
from limiter.authority.stats import Stats

KEY = ("key", "7", "chat")
ACCOUNT = ("account", "1", "chat")
WIDE = Limit(per_minute=6000, burst=100, queue_depth=10, max_wait=10)


def test_forgotten_scopes_take_their_statistics_with_them():
    engine, stats = Engine(), Stats()
    for decision in engine.acquire("t", (KEY, WIDE), (ACCOUNT, WIDE), 0, now=0.0):
        stats.record(decision, mono=0.0, wall=0.0)
    assert stats.admitted[KEY].last_minute(0.0) == 1

    stats.forget(engine.forget_idle(now=1000.0))

    assert engine.scopes == {}
    assert stats.admitted == {} and stats.refused == {}
