"""Job life cycles and control, in process with an injected clock: no sleeping."""

from __future__ import annotations

import pytest

from sandbox import SandboxConfig, SandboxState
from sandbox.http import ApiError

from .conftest import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> SandboxState:
    config = SandboxConfig(fine_tune_seconds=10, batch_seconds=10, validate_file_ids=False)
    return SandboxState(config, clock=clock, wall_clock=lambda: 1_700_000_000 + clock.now)


def test_fine_tune_walks_through_its_phases(state: SandboxState, clock: FakeClock) -> None:
    job = state.fine_tune_create({"training_file": "file-x", "model": "m"})
    seen = []
    for t in (0, 0.5, 1, 2, 2.5, 9.9, 10, 50):
        clock.now = 100 + t
        seen.append(job.to_json(clock.now)["status"])
    assert seen == [
        "pending",
        "pending",
        "queued",
        "queued",
        "running",
        "running",
        "completed",
        "completed",
    ]
    assert (
        job.to_json(clock.now)["updated_at"] == "2023-11-14T22:15:10.000000Z"
    )  # frozen at completion


def test_cancel_freezes_a_fine_tune_and_ignores_finished_ones(
    state: SandboxState, clock: FakeClock
) -> None:
    job = state.fine_tune_create({"training_file": "file-x", "model": "m"})
    clock.now += 3
    state.fine_tune_cancel(job.id)
    clock.now += 100
    assert job.status(clock.now) == "cancelled"

    done = state.fine_tune_create({"training_file": "file-x", "model": "m"})
    clock.now += 100
    state.fine_tune_cancel(done.id)
    assert done.status(clock.now) == "completed"


def test_fine_tune_cap_refuses_with_409_and_frees_on_completion(
    state: SandboxState, clock: FakeClock
) -> None:
    state.configure({"max_running_fine_tunes": 2})
    for _ in range(2):
        state.fine_tune_create({"training_file": "f", "model": "m"})
    with pytest.raises(ApiError) as refused:
        state.fine_tune_create({"training_file": "f", "model": "m"})
    assert refused.value.status == 409
    clock.now += 10
    state.fine_tune_create({"training_file": "f", "model": "m"})
    stats = state.stats()["fine_tunes"]
    assert stats == {
        "created": 3,
        "active": 1,
        "rejected_409": 1,
        "max_concurrent_fine_tunes_seen": 2,
    }


def test_max_concurrency_counts_overlap_not_totals(state: SandboxState, clock: FakeClock) -> None:
    first = state.fine_tune_create({"training_file": "f", "model": "m"})
    clock.now += 1
    state.fine_tune_create({"training_file": "f", "model": "m"})
    clock.now += 1
    state.fine_tune_cancel(first.id)
    state.fine_tune_create({"training_file": "f", "model": "m"})  # starts as the first one stops
    assert state.stats()["fine_tunes"]["max_concurrent_fine_tunes_seen"] == 2


def test_batch_progresses_and_gets_an_output_file(clock: FakeClock) -> None:
    state = SandboxState(SandboxConfig(batch_seconds=10), clock=clock)
    lines = b'{"custom_id": "a", "body": {}}\n{"custom_id": "b", "body": {}}\n'
    source = state.file_create(filename="in.jsonl", purpose="batch-api", content=lines)
    job = state.batch_create({"endpoint": "/v1/chat/completions", "input_file_id": source.id})

    assert state.batch_json(job)["status"] == "VALIDATING"
    clock.now += 6
    view = state.batch_json(job)
    assert (view["status"], view["progress"], view["output_file_id"]) == ("IN_PROGRESS", 50.0, None)
    clock.now += 4
    view = state.batch_json(job)
    assert (view["status"], view["progress"]) == ("COMPLETED", 100.0)
    output = state.file_get(view["output_file_id"]).content or b""
    assert [b'"custom_id": "a"' in output, b'"custom_id": "b"' in output] == [True, True]
    assert state.stats()["batches"]["request_counts"] == {job.id: 2}


def test_batch_needs_a_known_file_and_answers_in_plain_shape(state: SandboxState) -> None:
    state.configure({"validate_file_ids": True})
    with pytest.raises(ApiError) as missing:
        state.batch_create({"endpoint": "/v1/chat/completions", "input_file_id": "file-nope"})
    assert missing.value.plain
    assert missing.value.response().body == b'{"error": "File file-nope not found"}'


def test_configure_merges_and_reset_restores_the_starting_config(clock: FakeClock) -> None:
    state = SandboxState(SandboxConfig(api_key="secret"), clock=clock)
    state.configure({"limits": {"chat": {"requests_per_second": 3}}, "latency_ms": 5})
    assert state.config.limits["chat"].requests_per_second == 3
    assert state.config.limits["embeddings"].requests_per_second is None
    state.configure({"reset": True})
    assert (state.config.api_key, state.config.latency_ms) == ("secret", 0.0)
    assert state.config.limits["chat"].requests_per_second is None


def test_configure_rejects_unknown_fields(state: SandboxState) -> None:
    with pytest.raises(ValueError, match="latency"):
        state.configure({"latencyms": 5})
    with pytest.raises(ValueError, match="kind"):
        state.configure({"limits": {"audio": {"requests_per_second": 1}}})
