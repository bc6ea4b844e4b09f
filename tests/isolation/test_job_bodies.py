"""Job bodies that name another team's things: its files, its jobs, its models.

A body accepted with one of team B's file ids would be stored in the caller's job, and a
job's files count as the team's own (limiter/jobs/selectors.py `file_ids_for_team`): the
caller could then read B's file. So each case runs as an intruder team of its own (A's
role, not A itself, so a hole here does not spill into the other walks), and checks
afterwards that no job was stored and that B's file is still out of the intruder's reach.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.isolation.conftest import TRAINING, Team, World, assert_openai_error
from tests.jobs.conftest import MODEL, batch_lines

B_FILES = ["multipart", "redirect", "batch_input", "batch_output"]
BATCH = {"endpoint": "/v1/chat/completions"}


@dataclass
class Intruder:
    team: Team
    training_file: str
    batch_file: str


@pytest.fixture
def intruder(world: World) -> Iterator[Intruder]:
    """A fresh team with a training file and a batch input of its own."""
    team = world.new_team(f"iso-intruder-{uuid.uuid4().hex[:8]}")
    yield Intruder(
        team,
        team.client.upload(TRAINING, "fine-tune"),
        team.client.upload(batch_lines(2), "batch-api"),
    )
    team.client.close()


def _refused(world: World, intruder: Intruder, answer, code: str | None, before: dict) -> None:
    """404 in OpenAI's shape; no job stored; B's files still out of reach; B's rows untouched."""
    assert_openai_error(answer, 404, code)
    assert world.db.jobs_of(intruder.team.id) == []
    assert world.db.tenant_state(world.a.id, world.b.id) == before
    for file_id in world.b_files.values():
        assert intruder.team.client.get(f"/v1/files/{file_id}").status_code == 404


# --- files named in a body ---------------------------------------------------------------------
@pytest.mark.parametrize("which", B_FILES)
def test_fine_tune_on_another_teams_training_file(
    world: World, intruder: Intruder, which: str
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)
    answer = intruder.team.client.post(
        "/v1/fine-tunes", json={"model": MODEL, "training_file": world.b_files[which]}
    )
    _refused(world, intruder, answer, "not_found", before)


@pytest.mark.parametrize("which", B_FILES)
def test_fine_tune_validated_on_another_teams_file(
    world: World, intruder: Intruder, which: str
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)
    answer = intruder.team.client.post(
        "/v1/fine-tunes",
        json={
            "model": MODEL,
            "training_file": intruder.training_file,
            "validation_file": world.b_files[which],
        },
    )
    _refused(world, intruder, answer, None, before)


@pytest.mark.parametrize("which", B_FILES)
def test_batch_on_another_teams_input_file(world: World, intruder: Intruder, which: str) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)
    answer = intruder.team.client.post(
        "/v1/batches", json={**BATCH, "input_file_id": world.b_files[which]}
    )
    _refused(world, intruder, answer, "not_found", before)


@pytest.mark.parametrize("field", ["output_file_id", "error_file_id"])
def test_batch_naming_another_teams_file_as_its_output(
    world: World, intruder: Intruder, field: str
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)
    answer = intruder.team.client.post(
        "/v1/batches",
        json={
            **BATCH,
            "input_file_id": intruder.batch_file,
            field: world.b_files["batch_output"],
        },
    )
    _refused(world, intruder, answer, None, before)


@pytest.mark.parametrize("field", ["training_file", "validation_file"])
def test_price_estimate_on_another_teams_file(world: World, intruder: Intruder, field: str) -> None:
    """The sandbox, like Together, counts the file's tokens: an answer describes B's file."""
    before = world.db.tenant_state(world.a.id, world.b.id)
    body = {
        "model": MODEL,
        "training_file": intruder.training_file,
        field: world.b_files["multipart"],
    }
    answer = intruder.team.client.post("/v1/fine-tunes/estimate-price", json=body)
    _refused(world, intruder, answer, None, before)


# --- a job named in a body -----------------------------------------------------------------------
CHECKPOINTS = {
    "sluice_id": lambda w: w.b_fine_tunes.public["completed"],
    "together_id": lambda w: w.b_fine_tunes.upstream["completed"],
    "together_id_at_step": lambda w: w.b_fine_tunes.upstream["completed"] + ":1",
    "output_model": lambda w: w.b_model,
}


@pytest.mark.parametrize("form", CHECKPOINTS)
def test_fine_tune_from_another_teams_checkpoint(
    world: World, intruder: Intruder, form: str
) -> None:
    """Together takes a job id or an output model name, with an optional `:step`."""
    before = world.db.tenant_state(world.a.id, world.b.id)
    answer = intruder.team.client.post(
        "/v1/fine-tunes",
        json={
            "model": MODEL,
            "training_file": intruder.training_file,
            "from_checkpoint": CHECKPOINTS[form](world),
        },
    )
    _refused(world, intruder, answer, None, before)


def test_intruder_may_use_its_own_files(world: World, intruder: Intruder) -> None:
    """The control: the same bodies naming the intruder's own files are accepted."""
    estimate = intruder.team.client.post(
        "/v1/fine-tunes/estimate-price",
        json={"model": MODEL, "training_file": intruder.training_file},
    )
    assert estimate.status_code == 200, estimate.text
    batch = intruder.team.client.post(
        "/v1/batches", json={**BATCH, "input_file_id": intruder.batch_file}
    )
    assert batch.status_code == 201, batch.text
    assert [job.public_id for job in world.db.jobs_of(intruder.team.id)] == [
        batch.json()["job"]["id"]
    ]
