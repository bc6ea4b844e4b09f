"""The outsider on the team API: no key, a made-up key, or team B's own key since revoked.

Every /v1/ route, each naming B's things where it takes an id, a model or a body: 401 in
OpenAI's shape before anything is looked up, and nothing changed, in Sluice or upstream.
"""

from __future__ import annotations

from typing import Any

import pytest

from limiter.gateway.app import AUTH_FAILURES_PER_MINUTE
from tests.isolation.conftest import (
    TRAINING,
    TeamClient,
    World,
    assert_openai_error,
    eval_body,
)
from tests.isolation.routes import V1_ROUTES, V1Route, concrete_path
from tests.isolation.test_models import BODIES, FORM_FILES
from tests.jobs.conftest import MODEL


def _call(world: World, route: V1Route) -> dict[str, Any]:
    """The request for this route, naming B's things."""
    ids = {
        "file": world.b_files["multipart"],
        "fine_tune": world.b_fine_tunes.public["running"],
        "batch": world.b_batches.public["running"],
        "video": world.b_videos.public["running"],
        "evaluation": world.b_evaluation,
    }
    call: dict[str, Any] = {
        "path": concrete_path(route.pattern, id=ids.get(route.takes, "x"), project_id="proj")
    }
    if route.takes == "model":
        call["json"] = {"model": world.b_model, **BODIES[route.pattern]}
    elif route.takes == "form_model":
        call.update(data={"model": world.b_model}, files=FORM_FILES)
    elif route.takes == "upload":
        call.update(data={"purpose": "fine-tune"}, files={"file": ("o.jsonl", TRAINING)})
    elif route.pattern == "/v1/batches":
        call["json"] = {
            "endpoint": "/v1/chat/completions",
            "input_file_id": world.b_files["batch_input"],
        }
    elif route.takes == "body":
        call["json"] = {
            "model": MODEL,
            "training_file": world.b_files["multipart"],
            "from_checkpoint": world.b_fine_tunes.upstream["completed"],
        }
    elif route.takes == "tci_body":
        call["json"] = {"code": "x", "language": "python", "session_id": world.b_tci_session}
    elif route.takes == "eval_body":
        call["json"] = eval_body(world.b_files["eval_input"], judge=world.b_model)
    elif route.takes == "catalogue":
        call["params"] = {"model_name": world.b_model}
    return call


@pytest.mark.parametrize("route", V1_ROUTES, ids=lambda r: r.id)
def test_outsider_is_refused_everywhere(
    world: World, outsider: TeamClient, request: pytest.FixtureRequest, route: V1Route
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id), world.db.file_owner_count()
    upstream_files = len(world.upstream("GET", "/files").json()["data"])

    answer = outsider.request(route.method, **_call(world, route))

    no_key = request.node.callspec.params["outsider"] == "no_key"
    error = assert_openai_error(answer, 401, "missing_api_key" if no_key else "invalid_api_key")
    assert error["type"] == "authentication_error"
    assert (world.db.tenant_state(world.a.id, world.b.id), world.db.file_owner_count()) == before
    assert len(world.upstream("GET", "/files").json()["data"]) == upstream_files
    assert world.b.client.get(f"/v1/fine-tunes/{world.b_fine_tunes.public['running']}").json()[
        "status"
    ] not in ("cancelled", "cancel_requested")


def test_another_callers_bad_keys_do_not_lock_a_team_out(world: World) -> None:
    # Both from one address of their own, as two teams behind one load balancer would be
    # (127.0.0.1, which the other tests use, is left alone).
    guesser = TeamClient(world.server, "sk-sluice-not-a-key", own_address=True)
    team_a = TeamClient(world.server, world.a.secret, address=guesser.address)
    for _ in range(AUTH_FAILURES_PER_MINUTE):
        assert_openai_error(guesser.get("/v1/files"), 401, "invalid_api_key")

    answer = team_a.get("/v1/files")

    assert answer.status_code == 200, answer.text
    guesser.close()
    team_a.close()
