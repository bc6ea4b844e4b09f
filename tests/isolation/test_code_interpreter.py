"""Code interpreter sessions: a team uses and sees only the sessions it started (issue 23).

Team A naming team B's session in an execute is answered 404 in OpenAI's shape, before
Together hears of it (B's session runs nothing more upstream, nothing changes in Sluice);
A's session list shows A's own only. B's teammate uses B's session.
"""

from __future__ import annotations

import pytest

from tests.isolation.conftest import TeamClient, World, assert_openai_error
from tests.isolation.routes import V1Route, v1_routes

EXECUTES = v1_routes("tci_body")
LISTS = [route for route in v1_routes("listing") if route.pattern.endswith("/tci/sessions")]


def _upstream_session(world: World, session_id: str) -> dict:
    """The session as Together (the sandbox, asked directly) lists it."""
    rows = world.upstream("GET", "/tci/sessions").json()["data"]["sessions"]
    return next(row for row in rows if row["id"] == session_id)


@pytest.mark.parametrize("route", EXECUTES, ids=lambda r: r.id)
def test_another_teams_session_is_not_found(
    world: World, team_a: TeamClient, route: V1Route
) -> None:
    before = world.db.tenant_state(world.a.id, world.b.id)
    runs = _upstream_session(world, world.b_tci_session)["execute_count"]

    answer = team_a.post(
        route.pattern,
        json={"code": "print(x)", "language": "python", "session_id": world.b_tci_session},
    )

    error = assert_openai_error(answer, 404, "not_found")
    assert error["type"] == "not_found_error" and error["param"] == "session_id"
    assert error["message"] == (
        f"No code interpreter session with id '{world.b_tci_session}' for this team."
    )
    assert world.db.tenant_state(world.a.id, world.b.id) == before
    assert _upstream_session(world, world.b_tci_session)["execute_count"] == runs


def test_a_teams_own_session_still_runs(world: World, team_a: TeamClient) -> None:
    answer = team_a.post(
        "/v1/tci/execute",
        json={"code": "print(x)", "language": "python", "session_id": world.a_tci_session},
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["session_id"] == world.a_tci_session
    assert data["outputs"] == [{"type": "stdout", "data": "1\n"}]


@pytest.mark.parametrize("route", LISTS, ids=lambda r: r.id)
def test_the_session_list_shows_a_team_its_own_only(
    world: World, team_a: TeamClient, owner: TeamClient, route: V1Route
) -> None:
    # Together lists every team's sessions in the account.
    upstream = {
        row["id"] for row in world.upstream("GET", "/tci/sessions").json()["data"]["sessions"]
    }
    assert {world.a_tci_session, world.b_tci_session} <= upstream

    answer = team_a.get(route.pattern)

    assert answer.status_code == 200, answer.text
    assert [row["id"] for row in answer.json()["data"]["sessions"]] == [world.a_tci_session]
    assert not any(name in answer.text for name in world.b_ids())
    theirs = [row["id"] for row in owner.get(route.pattern).json()["data"]["sessions"]]
    assert theirs == [world.b_tci_session]


def test_teammate_uses_the_teams_session(world: World, teammate: TeamClient) -> None:
    answer = teammate.post(
        "/v1/tci/execute",
        json={"code": "x", "language": "python", "session_id": world.b_tci_session},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["session_id"] == world.b_tci_session
