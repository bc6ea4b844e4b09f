"""Videos and evaluations: a team reaches only its own, by any id (issue 23).

Team A names each of team B's videos (completed, running upstream, queued in Sluice), by
Sluice's id and by Together's, and B's evaluation, on every route that takes one: 404 in
OpenAI's shape, nothing changed in Sluice, B's still B's. A's lists show A's own only;
an evaluation naming B's file or B's fine-tuned model is answered as an unknown one. (B's
checkpoints and tokenized dataset are walked with its fine-tunes in test_jobs.py.)
"""

from __future__ import annotations

import pytest

from tests.isolation.conftest import TeamClient, World, assert_openai_error, eval_body
from tests.isolation.routes import V1Route, v1_routes

VIDEO_CASES = [
    pytest.param(route, state, form, id=f"{route.id}-{state}-{form}")
    for route in v1_routes("video")
    for state in ("completed", "running", "queued")
    for form in ("sluice_id", "together_id")
    if not (state == "queued" and form == "together_id")  # a queued video has no Together id
]


@pytest.mark.parametrize(("route", "state", "form"), VIDEO_CASES)
def test_another_teams_video_is_not_found(
    world: World, team_a: TeamClient, owner: TeamClient, route: V1Route, state: str, form: str
) -> None:
    public_id = world.b_videos.public[state]
    named = public_id if form == "sluice_id" else world.b_videos.upstream[state]
    before = world.db.tenant_state(world.a.id, world.b.id)

    answer = team_a.request(route.method, route.pattern.format(id=named))

    error = assert_openai_error(answer, 404, "not_found")
    assert error["type"] == "not_found_error"
    assert error["message"] == f"No video job with id '{named}' for this team."
    assert world.db.tenant_state(world.a.id, world.b.id) == before
    assert owner.get(f"/v2/videos/{public_id}").status_code == 200


@pytest.mark.parametrize("route", v1_routes("evaluation"), ids=lambda r: r.id)
def test_another_teams_evaluation_is_not_found(
    world: World, team_a: TeamClient, owner: TeamClient, route: V1Route
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)

    answer = team_a.request(route.method, route.pattern.format(id=world.b_evaluation))

    error = assert_openai_error(answer, 404, "not_found")
    assert error["message"] == f"No evaluation with id '{world.b_evaluation}' for this team."
    assert world.db.tenant_state(world.a.id, world.b.id) == before
    # Still B's, and still upstream.
    assert owner.get(route.pattern.format(id=world.b_evaluation)).status_code == 200
    assert world.upstream("GET", f"/evaluation/{world.b_evaluation}").status_code == 200


def test_lists_show_a_team_its_own_videos_and_evaluations_only(
    world: World, team_a: TeamClient, owner: TeamClient
) -> None:
    videos = team_a.get("/v2/videos")
    evaluations = team_a.get("/v1/evaluation")

    assert videos.status_code == 200 and evaluations.status_code == 200
    assert [row["id"] for row in videos.json()["data"]] == [world.a_video]
    assert [row["workflow_id"] for row in evaluations.json()] == [world.a_evaluation]
    for answer in (videos, evaluations):
        assert not any(name in answer.text for name in world.b_ids())
        assert world.b.name not in answer.text
    theirs = {row["id"] for row in owner.get("/v2/videos").json()["data"]}
    assert theirs == set(world.b_videos.public.values())
    assert [row["workflow_id"] for row in owner.get("/v1/evaluation").json()] == [
        world.b_evaluation
    ]


def test_teammate_sees_the_teams_videos_and_evaluation(world: World, teammate: TeamClient) -> None:
    for video_id in world.b_videos.public.values():
        answer = teammate.get(f"/v2/videos/{video_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == video_id
    status = teammate.get(f"/v1/evaluation/{world.b_evaluation}/status")
    assert status.status_code == 200 and status.json()["status"] == "completed"


def test_an_evaluation_naming_another_teams_file_is_refused(
    world: World, team_a: TeamClient
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)
    upstream = len(world.upstream("GET", "/evaluation").json())

    answer = team_a.post("/v1/evaluation", json=eval_body(world.b_files["eval_input"]))

    error = assert_openai_error(answer, 404, "not_found")
    assert error["param"] == "parameters.input_data_file_path"
    assert world.db.tenant_state(world.a.id, world.b.id) == before
    assert len(world.upstream("GET", "/evaluation").json()) == upstream


def test_an_evaluation_judged_by_another_teams_model_is_refused(
    world: World, team_a: TeamClient
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)
    upstream = len(world.upstream("GET", "/evaluation").json())
    answer = team_a.post("/v1/evaluation", json=eval_body(world.a_eval_file, judge=world.b_model))

    assert_openai_error(answer, 404, "model_not_found")
    after = world.db.tenant_state(world.a.id, world.b.id)
    assert after["objects"] == before["objects"] and after["jobs"] == before["jobs"]
    assert len(world.upstream("GET", "/evaluation").json()) == upstream
