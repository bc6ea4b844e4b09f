"""Files: one Together account holds every team's files; a team reaches only its own.

Team A names each of team B's files (uploaded plainly, through the redirect flow, a batch
input, a batch's output) on every /v1/ route that takes a file id: 404 in OpenAI's shape,
nothing changed in Sluice's database, the file still upstream and still B's.
"""

from __future__ import annotations

import pytest

from tests.isolation.conftest import TeamClient, World, assert_openai_error
from tests.isolation.routes import V1Route, v1_routes

B_FILES = ["multipart", "redirect", "batch_input", "batch_output"]


@pytest.mark.parametrize("route", v1_routes("file"), ids=lambda r: r.id)
@pytest.mark.parametrize("which", B_FILES)
def test_another_teams_file_is_not_found(
    world: World, team_a: TeamClient, owner: TeamClient, route: V1Route, which: str
) -> None:
    file_id = world.b_files[which]
    before = world.db.tenant_state(world.a.id, world.b.id)

    answer = team_a.request(route.method, route.pattern.format(id=file_id))

    error = assert_openai_error(answer, 404, "not_found")
    assert error["type"] == "not_found_error"
    assert error["message"] == f"No file with id '{file_id}' for this team."
    assert world.db.tenant_state(world.a.id, world.b.id) == before
    # Still upstream (a DELETE did not go through), and still B's to read.
    assert world.upstream("GET", f"/files/{file_id}").status_code == 200
    assert owner.get(f"/v1/files/{file_id}").status_code == 200


def test_listing_shows_a_team_its_own_files_only(
    world: World, team_a: TeamClient, owner: TeamClient
) -> None:
    mine = team_a.get("/v1/files")
    theirs = owner.get("/v1/files")

    assert mine.status_code == 200 and theirs.status_code == 200
    assert {row["id"] for row in mine.json()["data"]} == {
        world.a_file,
        world.a_batch_file,
        world.a_eval_file,
        *_outputs(world, team_a),
    }
    assert not world.b_ids() & {row["id"] for row in mine.json()["data"]}
    assert world.b.name not in mine.text
    assert {row["id"] for row in theirs.json()["data"]} >= set(world.b_files.values())


def test_teammate_reads_the_teams_files(world: World, teammate: TeamClient) -> None:
    for file_id in world.b_files.values():
        answer = teammate.get(f"/v1/files/{file_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == file_id
    content = teammate.get(f"/v1/files/{world.b_files['multipart']}/content")
    assert content.status_code == 200 and content.content.startswith(b'{"text"')


def test_a_team_reads_its_own_file(world: World, team_a: TeamClient) -> None:
    answer = team_a.get(f"/v1/files/{world.a_file}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == world.a_file


def _outputs(world: World, client: TeamClient) -> set[str]:
    """The output file of A's own batch: Together made it, A may read it."""
    batch = client.get(f"/v1/batches/{world.a_batch}").json()
    return {batch["output_file_id"]} if batch.get("output_file_id") else set()
