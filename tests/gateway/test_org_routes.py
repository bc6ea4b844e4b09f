"""Issue 23, organisation-level routes over real HTTP: refused with a JSON 403 naming the
route by default; allowed to a team whose profile has a row for the kind, with what it
creates owned by that team (another team's id is a 404); the public hardware lists pass."""

from __future__ import annotations

import httpx
import pytest

from limiter.gateway import org
from limiter.gateway.errors import MSG_ROUTE_REFUSED
from sandbox import SandboxConfig
from tests.isolation.routes import concrete_path, v1_routes
from tests.servers import SluiceServer
from tests.waiting import wait_until

H100 = "1x_nvidia_h100_80gb_sxm"
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
# One call per kind and spelling, each refused to a team without the row.
REFUSED = [
    ("POST", "/v1/endpoints", "org_endpoints"),
    ("GET", "/v1/endpoints", "org_endpoints"),
    ("PATCH", "/v1/endpoints/endpoint-1", "org_endpoints"),
    ("POST", "/v2/projects/proj-1/endpoints", "org_endpoints"),
    ("DELETE", "/v2/projects/proj-1/endpoints/endpoint-1/deployments/d-1", "org_endpoints"),
    ("POST", "/v1/models", "org_models"),
    ("POST", "/v2/projects/proj-1/models", "org_models"),
    ("POST", "/v1/rl/jobs", "org_training"),
    ("GET", "/v1/shaping/jobs/s-1", "org_training"),
    ("POST", "/v1/deployments", "org_deployments"),
    ("GET", "/v1/queue/status", "org_deployments"),
    ("POST", "/v1/compute/clusters", "org_compute"),
    ("GET", "/v1/billing/usage", "org_billing"),
    ("GET", "/v1/projects", "org_projects"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with SluiceServer(tmp_path_factory.mktemp("org"), sandbox=SandboxConfig()) as server:
        server.make_profile("endpoint-admins", {})
        # Ops allow the kind with a profile row, in the ops API (audited like any limit).
        with httpx.Client(
            base_url=f"{server.url}/api", headers={"authorization": f"Bearer {server.admin_token}"}
        ) as api:
            profile = next(p for p in api.get("/profiles").json() if p["name"] == "endpoint-admins")
            row = {"endpoint": "org_endpoints", "requests_per_minute": 60, "burst": 5}
            made = api.post(f"/profiles/{profile['id']}/limits", json=row)
            assert made.status_code == 201, made.text
        server.make_profile("endpoint-tight", {})
        server.python(
            "from limiter.models import EndpointLimit, LimitProfile\n"
            "EndpointLimit.objects.create(profile=LimitProfile.objects.get(name='endpoint-tight'),"
            " endpoint='org_endpoints', requests_per_minute=1, burst=1, queue_depth=0)"
        )
        yield server


@pytest.fixture(scope="module")
def teams(server: SluiceServer) -> dict[str, httpx.Client]:
    keys = {
        "plain": server.issue_key("plain"),
        "ops_a": server.issue_key("ops-a", profile="endpoint-admins"),
        "ops_b": server.issue_key("ops-b", profile="endpoint-admins"),
    }
    clients = {
        name: httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        for name, key in keys.items()
    }
    yield clients
    for client in clients.values():
        client.close()


def upstream_endpoints(server: SluiceServer) -> list[dict]:
    answer = httpx.get(
        f"{server.sandbox.v1_url}/endpoints", headers={"authorization": "Bearer org"}
    )
    return answer.raise_for_status().json()["data"]


@pytest.mark.parametrize(("method", "path", "kind"), REFUSED, ids=lambda v: str(v))
def test_every_kind_is_refused_by_default_naming_the_route(server, teams, method, path, kind):
    before = upstream_endpoints(server)
    body = {"model": MODEL, "hardware": H100} if method in ("POST", "PATCH") else None

    answer = teams["plain"].request(method, path, json=body)

    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "route_not_allowed")
    assert error["message"] == MSG_ROUTE_REFUSED.format(
        method=method, path=path, what=org.what(kind), kind=kind
    )
    assert upstream_endpoints(server) == before  # Together never heard of it


def test_an_allowed_kind_does_not_open_the_others(teams):
    answer = teams["ops_a"].post("/v1/compute/clusters", json={})
    assert answer.status_code == 403
    assert "a row for 'org_compute'" in answer.json()["error"]["message"]


def test_the_public_hardware_lists_pass_through(teams):
    hardware = teams["plain"].get("/v1/hardware")
    assert hardware.status_code == 200, hardware.text
    assert H100 in [h["id"] for h in hardware.json()["data"]]
    types = teams["plain"].get("/v2/public/inference-instance-types")
    assert types.status_code == 200, types.text
    assert H100 in [t["id"] for t in types.json()["data"]]


def test_an_allowed_team_owns_what_it_creates(server, teams):
    made = teams["ops_a"].post("/v1/endpoints", json={"model": MODEL, "hardware": H100})
    assert made.status_code == 200, made.text
    endpoint_id = made.json()["id"]
    assert made.json()["type"] == "dedicated"
    owner = server.python(
        "from limiter.models import ManagedObject\n"
        f"print(ManagedObject.objects.get(object_id={endpoint_id!r}).team.name)"
    )
    assert owner.strip() == "ops-a"

    # Its team reads it, in both spellings, and lists it.
    assert teams["ops_a"].get(f"/v1/endpoints/{endpoint_id}").status_code == 200
    projected = teams["ops_a"].get(f"/v2/projects/proj-1/endpoints/{endpoint_id}")
    assert projected.status_code == 200, projected.text
    assert [e["id"] for e in teams["ops_a"].get("/v1/endpoints").json()["data"]] == [endpoint_id]

    # Another allowed team: a 404 as for an unknown id, and an empty list.
    for method in ("GET", "PATCH", "DELETE"):
        other = teams["ops_b"].request(
            method, f"/v1/endpoints/{endpoint_id}", json={"state": "STOPPED"}
        )
        assert other.status_code == 404, (method, other.text)
        assert other.json()["error"]["code"] == "not_found"
    assert teams["ops_b"].get("/v1/endpoints").json()["data"] == []
    unknown = teams["ops_b"].get("/v1/endpoints/endpoint-never-made")
    assert unknown.status_code == 404
    assert [e["state"] for e in upstream_endpoints(server) if e["id"] == endpoint_id] == ["STARTED"]

    # Its own team deletes it: gone upstream, and nobody owns the id any more.
    assert teams["ops_a"].delete(f"/v1/endpoints/{endpoint_id}").status_code == 204
    assert endpoint_id not in [e["id"] for e in upstream_endpoints(server)]
    count = server.python(
        "from limiter.models import ManagedObject\n"
        f"print(ManagedObject.objects.filter(object_id={endpoint_id!r}).count())"
    )
    assert count.strip() == "0"


@pytest.mark.parametrize("route", v1_routes("org"), ids=lambda r: r.id)
def test_every_organisation_route_is_a_403_for_a_team_without_the_row(server, teams, route):
    path = concrete_path(route.pattern, id="endpoint-1", project_id="proj-1", rest="a/b")
    answer = teams["plain"].request(route.method, path, json={} if route.method != "GET" else None)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "route_not_allowed"
    assert f"{route.method} {path} is " in answer.json()["error"]["message"]


def test_an_allowed_call_without_a_content_type_is_forwarded(teams):
    answer = teams["ops_a"].post("/v1/endpoints", content=b'{"model": "x/y", "hardware": "nope"}')
    # Together's own 400 (unknown hardware), relayed: not a 500 for the missing header.
    assert answer.status_code == 400, answer.text
    assert "Unknown hardware" in answer.json()["error"]["message"]


def test_the_allowing_row_is_also_the_kinds_rate_and_its_429_is_recorded(server):
    key = server.issue_key("tight-ops", profile="endpoint-tight")
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        first = client.get("/v1/endpoints")
        second = client.get("/v1/endpoints")
    assert first.status_code == 200, first.text
    assert second.status_code == 429, second.text
    assert second.headers["x-sluice-limited-by"] == "gateway"
    reason = second.json()["error"]["code"]
    recorded = wait_until(
        lambda: server.python(
            "from limiter.models import Refusal\n"
            "print(list(Refusal.objects.filter(team_name='tight-ops')"
            ".values_list('endpoint', 'reason', 'source')))"
        ).strip(),
        lambda rows: rows != "[]",
        what="the 429 in the refusal record",
    )
    assert recorded == f"[('org_endpoints', '{reason}', 'gateway')]"


def test_the_together_sdk_hears_the_403_naming_the_route_and_lists_hardware(server):
    """The together SDK 3.x with only its base URL changed: a team without the row calling a
    dedicated-endpoint method gets the SDK's PermissionDeniedError, its message naming the
    route and the row that would allow it; the public hardware list passes through."""
    import together

    client = together.Together(
        base_url=server.url, api_key=server.issue_key("sdk-plain"), max_retries=0
    )
    with pytest.raises(together.PermissionDeniedError) as refused:
        client.endpoints.list(project_id="proj-1")
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["code"] == "route_not_allowed"
    assert "GET /v2/projects/proj-1/endpoints" in error["message"]
    assert "'org_endpoints'" in error["message"]
    listed = client.endpoints.hardware.list()
    assert listed.object == "list"
    h100 = next(row for row in listed.data if row.id == H100)
    assert (h100.gpu_type, h100.gpu_count, h100.gpu_memory_gib) == ("H100", 1, 80)
