"""The learned ceilings (limiter/authority/learning.py), through their own interface: each
model's account scope starts at its profile's row, moves with Together's headers and 429s,
ramps back up under demand, resets, and is saved and restored across restarts."""

from __future__ import annotations

import pytest

from limiter.authority import learning
from limiter.authority.ceilings import QUIET_SECONDS, Learned
from limiter.authority.config import UNLIMITED
from limiter.authority.engine import Limit
from limiter.authority.learning import LearnedCeilings
from limiter.protocol import events

FLUX = ("account", "1", "images", "black-forest-labs/FLUX.1-schnell")
FILES = ("account", "1", "files", "")
ROW = Limit(per_minute=60, burst=1)


def ceilings(*, learn: bool = True) -> LearnedCeilings:
    return LearnedCeilings(margin=0.1, unit_seconds=1.0, learn=learn)


def report(*, headers: dict[str, str] | None = None, pause: float = 0.0, error_type: str = ""):
    message: events.UpstreamReportMessage = {
        "type": events.UPSTREAM_REPORT,
        "account": FLUX[1],
        "endpoint": FLUX[2],
        "model": FLUX[3],
        "error_type": error_type,
        "pause": pause,
        "headers": headers or {},
        "refused": pause > 0,
        "unavailable": 0,
    }
    return message


def test_a_model_starts_at_its_profiles_row_and_a_call_without_a_model_is_not_paced():
    learned = ceilings()
    assert learned.limit(FLUX, ROW) == ROW
    assert learned.limit(FILES, ROW) == ROW and FILES not in learned.ceilings
    assert learned.limit(("account", "1", "chat", "m"), UNLIMITED) == UNLIMITED
    assert list(learned.ceilings) == [FLUX]


def test_headers_and_a_429_move_the_models_pace_and_are_marked_unsaved():
    learned = ceilings()
    learned.limit(FLUX, ROW)
    paced = learned.learn(FLUX, report(headers={"x-ratelimit-limit-dynamic": "0.5"}), now=0.0)
    assert paced is not None and paced.per_minute == pytest.approx(27)  # 30/min less 10%
    assert learned.learn(FLUX, report(headers={"x-ratelimit-limit": "x"}), now=0.0) is None
    halved = learned.learn(FLUX, report(pause=2.0), now=1.0)
    assert halved is not None and halved.per_minute == pytest.approx(13.5)
    assert learned.ceilings[FLUX].source == "429"
    assert FLUX in learned.changed_at


def test_nothing_is_learned_for_a_model_never_called_or_with_learning_off():
    assert ceilings().learn(FLUX, report(pause=1.0), now=0.0) is None
    off = ceilings(learn=False)
    off.limit(FLUX, ROW)
    assert off.learn(FLUX, report(headers={"x-ratelimit-limit": "0.5"}), now=0.0) is None
    assert off.ceilings[FLUX].pace == 60


def test_a_waiting_model_ramps_up_once_together_has_been_quiet():
    learned = ceilings()
    learned.limit(FLUX, ROW)
    learned.learn(FLUX, report(pause=1.0), now=0.0)  # 30 a minute
    assert learned.ramp(1.0, waiting={FLUX}) == []  # too soon after the 429
    assert learned.ramp(QUIET_SECONDS + 1, waiting=set()) == []  # nobody waits
    ((scope_id, limit),) = learned.ramp(QUIET_SECONDS + 1, waiting={FLUX})
    assert scope_id == FLUX and limit.per_minute == pytest.approx(36)  # a tenth of 60


def test_a_profile_change_is_the_new_cap_and_a_reset_starts_from_the_profile_again():
    learned = ceilings()
    learned.limit(FLUX, ROW)
    assert learned.limit(FLUX, Limit(per_minute=20, burst=1)).per_minute == 20
    learned.learn(FLUX, report(pause=1.0), now=0.0)
    learned.reset(FLUX)
    assert FLUX not in learned.ceilings and FLUX not in learned.changed_at
    assert learned.limit(FLUX, ROW) == ROW
    assert learned.ceilings[FLUX].source == "profile"


async def test_only_what_changed_is_saved_and_a_failed_save_is_kept_for_the_next(monkeypatch):
    saved: list[dict] = []

    def save(states):
        saved.append(dict(states))
        if len(saved) == 1:
            raise ConnectionError("the database is down")
        return len(states)

    monkeypatch.setattr(learning, "learned_save", save)
    learned = ceilings()
    assert await learned.persist() == 0  # nothing changed: no write at all
    learned.limit(FLUX, ROW)
    learned.learn(FLUX, report(pause=1.0), now=0.0)
    assert await learned.persist() == 0  # failed
    assert await learned.persist() == 1  # retried
    assert await learned.persist() == 0
    assert [list(states) for states in saved] == [[FLUX], [FLUX]]
    assert saved[1][FLUX].pace == 30 and saved[1][FLUX].source == "429"


async def test_a_restored_state_is_where_a_models_ceiling_starts(monkeypatch):
    state = Learned(
        learned=30, learned_tokens=None, pace=20, token_pace=None, source="429", updated_at=5.0
    )
    monkeypatch.setattr(learning, "learned_load", lambda max_age: {FLUX: state})
    learned = ceilings()
    assert await learned.restore() == 1
    assert learned.limit(FLUX, ROW).per_minute == 20
    assert learned.changed_at[FLUX] == 5.0


async def test_a_restore_with_the_database_down_starts_from_the_profiles(monkeypatch):
    def down(max_age):
        raise ConnectionError("the database is down")

    monkeypatch.setattr(learning, "learned_load", down)
    learned = ceilings()
    assert await learned.restore() == 0
    assert learned.limit(FLUX, ROW) == ROW


def test_a_429_stating_the_limit_paces_at_it_less_a_wider_margin_not_at_half():
    """The rule through the limiter's own interface: the 429's headers are learned first,
    and a limit they state makes the 429 jitter (margin doubled), not a halving."""
    learned = ceilings()
    learned.limit(FLUX, ROW)
    stated = {"x-ratelimit-limit-dynamic": "0.5", "x-ratelimit-limit": "1"}  # 30 a minute
    paced = learned.learn(FLUX, report(headers=stated, pause=0.4), now=0.0)
    assert paced is not None and paced.per_minute == pytest.approx(27)  # 30 less 10%, not 13.5
    assert learned.ceilings[FLUX].source == "429"
