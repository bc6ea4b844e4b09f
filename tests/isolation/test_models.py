"""Models: a fine-tuned model is its team's. Another team naming it gets the answer an
unknown model gets (404 `model_not_found`), on every route that takes a model."""

from __future__ import annotations

import pytest

from tests.isolation.conftest import TeamClient, World, assert_openai_error
from tests.isolation.routes import V1Route, v1_routes

BODIES = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/completions": {"prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"input": "hi"},
    "/v1/images/generations": {"prompt": "a sluice gate"},
    "/v1/rerank": {"query": "hi", "documents": ["hi", "there"]},
    "/v1/audio/speech": {"input": "hi", "voice": "polite man"},
    "/v2/videos": {"prompt": "a sluice gate"},
}
# A multipart form's parts besides its model (transcriptions, translations).
FORM_FILES = {"file": ("clip.wav", b"RIFF\x24\x00\x00\x00WAVE")}

MODEL_LISTS = [route for route in v1_routes("listing") if route.pattern.endswith("/models")]


def model_body(route: V1Route, model: str) -> dict:
    return {"model": model, **BODIES[route.pattern]}


@pytest.mark.parametrize("route", v1_routes("model"), ids=lambda r: r.id)
def test_another_teams_fine_tuned_model_is_not_found(
    world: World, team_a: TeamClient, route: V1Route
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)

    answer = team_a.post(route.pattern, json=model_body(route, world.b_model))

    error = assert_openai_error(answer, 404, "model_not_found")
    assert error["param"] == "model"
    assert world.db.tenant_state(world.a.id, world.b.id) == before


@pytest.mark.parametrize("route", v1_routes("form_model"), ids=lambda r: r.id)
def test_another_teams_fine_tuned_model_is_not_found_in_a_form(
    world: World, team_a: TeamClient, route: V1Route
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)

    answer = team_a.post(route.pattern, data={"model": world.b_model}, files=FORM_FILES)

    error = assert_openai_error(answer, 404, "model_not_found")
    assert error["param"] == "model"
    assert world.db.tenant_state(world.a.id, world.b.id) == before


@pytest.mark.parametrize(
    "route",
    [r for r in v1_routes("model") if r.pattern.endswith("completions")],
    ids=lambda r: r.id,
)
@pytest.mark.parametrize("who", ["owner", "teammate"])
def test_the_team_uses_its_own_fine_tuned_model(world: World, route: V1Route, who: str) -> None:
    client = world.b.client if who == "owner" else world.b_teammate.client
    answer = client.post(route.pattern, json=model_body(route, world.b_model))
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == world.b_model


@pytest.mark.parametrize("route", MODEL_LISTS, ids=lambda r: r.id)
def test_model_list_answers_every_team(world: World, team_a: TeamClient, route: V1Route) -> None:
    """The list is Together's list for the account, the same for every team."""
    answer = team_a.get(route.pattern.format(project_id="proj"))
    assert answer.status_code == 200, answer.text
    ids = {row["id"] for row in answer.json()["data"]}
    assert "meta-llama/Llama-3.3-70B-Instruct-Turbo" in ids


@pytest.mark.parametrize("route", MODEL_LISTS, ids=lambda r: r.id)
def test_model_list_does_not_name_another_teams_fine_tuned_model(
    world: World, team_a: TeamClient, route: V1Route
) -> None:
    answer = team_a.get(route.pattern.format(project_id="proj"))
    assert answer.status_code == 200
    assert world.b_model not in {row["id"] for row in answer.json()["data"]}
