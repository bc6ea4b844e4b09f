"""The 429 recorder on its own: batched writes, nothing lost on a failed write, bounded."""

from __future__ import annotations

import pytest

from limiter.gateway import refusals as recorder_module
from limiter.gateway.refusals import Recorder
from limiter.models import ApiKey, Refusal
from limiter.services import key_issue, team_get_or_create

pytestmark = pytest.mark.django_db(transaction=True)


def refuse(recorder: Recorder, n: int = 1, model: str = "m") -> None:
    for i in range(n):
        recorder.refusal(
            team_id=None,
            team_name="t",
            key_prefix="sk-sluice-abc",
            upstream="together",
            endpoint="chat",
            model=model,
            reason="rate_limited",
            source="gateway",
            retry_after=1.0,
            request_id=f"req-{i}",
        )


@pytest.fixture
def seeded(seeded_transactional_db):
    return seeded_transactional_db


async def test_flush_writes_refusals_and_last_use_in_one_go(seeded) -> None:
    from asgiref.sync import sync_to_async

    team, _ = await sync_to_async(team_get_or_create)(name="search")
    key = (await sync_to_async(key_issue)(team=team)).key
    recorder = Recorder()
    refuse(recorder, 3, model="x" * 500)
    recorder.key_used(str(key.pk))
    assert await recorder.flush() == 3
    assert await Refusal.objects.acount() == 3
    assert len((await Refusal.objects.afirst()).model) == 200  # cut to the column
    assert (await ApiKey.objects.aget(pk=key.pk)).last_used_at is not None
    assert await recorder.flush() == 0  # nothing left


async def test_failed_write_keeps_the_records_for_the_next_flush(seeded, monkeypatch) -> None:
    recorder = Recorder()
    refuse(recorder, 2)

    def broken(*args):
        raise RuntimeError("database down")

    monkeypatch.setattr(recorder_module, "_write", broken)
    assert await recorder.flush() == 0
    refuse(recorder, 1)
    monkeypatch.undo()
    assert await recorder.flush() == 3
    assert await Refusal.objects.acount() == 3


def test_buffer_is_bounded_and_drops_the_oldest(monkeypatch, caplog) -> None:
    monkeypatch.setattr(recorder_module, "MAX_BUFFER", 5)
    recorder = Recorder()
    refuse(recorder, 7)
    assert [r.request_id for r in recorder._refusals] == [
        "req-2",
        "req-3",
        "req-4",
        "req-5",
        "req-6",
    ]
    assert "buffer full" in caplog.text
