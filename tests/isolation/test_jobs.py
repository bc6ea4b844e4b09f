"""Fine-tunes and batches: a team reaches only its own jobs, by any id.

Team A names each of team B's jobs (completed, running upstream, queued in Sluice), by
Sluice's id and by Together's, on every /v1/ route that takes a job id: 404 in OpenAI's
shape, and B's job exactly as it was (not cancelled, in Sluice or upstream).
"""

from __future__ import annotations

import pytest

from tests.isolation.conftest import Jobs, Team, TeamClient, World, assert_openai_error
from tests.isolation.routes import V1Route, v1_routes
from tests.jobs.conftest import batch_lines
from tests.waiting import wait_until

CANCELLED = {"cancelled", "cancel_requested", "CANCELLED", "CANCELING"}
KIND_PATH = {"fine_tune": "fine-tunes", "batch": "batches"}
WHAT = {"fine_tune": "fine-tune job", "batch": "batch"}

JOB_CASES = [
    pytest.param(route, state, form, id=f"{route.id}-{state}-{form}")
    for route in v1_routes("fine_tune", "batch")
    for state in ("completed", "running", "queued")
    for form in ("sluice_id", "together_id")
    if not (state == "queued" and form == "together_id")  # a queued job has no Together id yet
]


def _jobs(world: World, kind: str) -> Jobs:
    return world.b_fine_tunes if kind == "fine_tune" else world.b_batches


@pytest.mark.parametrize(("route", "state", "form"), JOB_CASES)
def test_another_teams_job_is_not_found(
    world: World, team_a: TeamClient, owner: TeamClient, route: V1Route, state: str, form: str
) -> None:
    jobs = _jobs(world, route.takes)
    public_id = jobs.public[state]
    named = public_id if form == "sluice_id" else jobs.upstream[state]
    before = world.db.tenant_state(world.a.id, world.b.id)

    answer = team_a.request(route.method, route.pattern.format(id=named))

    error = assert_openai_error(answer, 404, "not_found")
    assert error["type"] == "not_found_error"
    assert error["message"] == f"No {WHAT[route.takes]} with id '{named}' for this team."
    assert world.db.tenant_state(world.a.id, world.b.id) == before
    # B still sees its job, not cancelled; nor is it upstream.
    shown = owner.get(f"/v1/{KIND_PATH[route.takes]}/{public_id}")
    assert shown.status_code == 200
    assert shown.json()["status"] not in CANCELLED
    if state != "queued":
        upstream = world.upstream("GET", f"/{KIND_PATH[route.takes]}/{jobs.upstream[state]}")
        assert upstream.json()["status"] not in CANCELLED


@pytest.mark.parametrize("kind", ["fine_tune", "batch"])
def test_lists_show_a_team_its_own_jobs_only(
    world: World, team_a: TeamClient, owner: TeamClient, kind: str
) -> None:
    mine = team_a.get(f"/v1/{KIND_PATH[kind]}")
    theirs = owner.get(f"/v1/{KIND_PATH[kind]}")

    assert mine.status_code == 200 and theirs.status_code == 200
    rows = mine.json()["data"] if kind == "fine_tune" else mine.json()
    own = world.a_fine_tune if kind == "fine_tune" else world.a_batch
    assert [row["id"] for row in rows] == [own]
    assert not any(name in mine.text for name in world.b_ids())
    assert world.b.name not in mine.text
    their_rows = theirs.json()["data"] if kind == "fine_tune" else theirs.json()
    assert {row["id"] for row in their_rows} >= set(_jobs(world, kind).public.values())


@pytest.mark.parametrize("kind", ["fine_tune", "batch"])
def test_teammate_sees_the_teams_jobs(world: World, teammate: TeamClient, kind: str) -> None:
    for job_id in _jobs(world, kind).public.values():
        answer = teammate.get(f"/v1/{KIND_PATH[kind]}/{job_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == job_id


def wait_started(team: Team, batch_id: str, what: str) -> None:
    """A batch accepted with a free slot starts: at once, or, when the job poller claimed
    it first (it starts queued work too), moments later; a claimed batch reads QUEUED
    until Together has it."""
    wait_until(
        lambda: team.client.get(f"/v1/batches/{batch_id}").json()["status"],
        lambda status: status != "QUEUED",
        within=15,
        what=f"{what} to start",
    )


def test_a_revoked_keys_queued_batch_never_starts(world: World) -> None:
    """Work a key queued stays its key's: once the key is revoked, it must not start."""
    leaver = world.new_team("iso-c", profile="iso-c")  # one batch at a time for this team
    stayer = world.add_key(leaver, "stays")
    input_file = stayer.client.upload(batch_lines(2), "batch-api")
    body = {"endpoint": "/v1/chat/completions", "input_file_id": input_file}
    running = stayer.client.post("/v1/batches", json=body)  # runs for the session
    assert running.status_code == 201, running.text
    wait_started(stayer, running.json()["job"]["id"], "the first batch, taking the team's slot")
    queued = leaver.client.post("/v1/batches", json=body)
    assert queued.status_code == 201, queued.text
    job_id = queued.json()["job"]["id"]
    assert queued.json()["job"]["status"] == "QUEUED"

    world.ops.post(f"/keys/{leaver.key_id}/revoke").raise_for_status()
    # More slots for the team, and the teammate's next batch starts what is queued, in order.
    profile = next(p for p in world.ops.get("/profiles").json() if p["name"] == "iso-c")
    limit_id = next(limit["id"] for limit in profile["limits"] if limit["endpoint"] == "batches")
    world.ops.patch(f"/limits/{limit_id}", json={"max_concurrent": 3}).raise_for_status()
    started = stayer.client.post("/v1/batches", json=body)
    assert started.status_code == 201, started.text
    wait_started(stayer, started.json()["job"]["id"], "the teammate's batch")  # a slot was free

    job = world.db.job(job_id)
    assert job.upstream_id is None, (
        f"the revoked key's queued batch was started upstream ({job.state})"
    )
    assert job.state not in ("starting", "running")
    stayer.client.close()
    leaver.client.close()
