"""Together's code interpreter through Sluice with the together SDK 3.1, unchanged but for the
base URL, over real HTTP to the sandbox: the answer the SDK parses, the team's usage rows
(a call each, a session billed once), and a 429 from a tight profile row recorded with its
reason (issue 23).

The together SDK 3.1 has no `code_interpreter` resource (2.x had `execute` and
`sessions.list`, on `/tci/execute` and `/tci/sessions` under its `/v1` base URL). A 3.1 user
calls the routes with the SDK's own `post`/`get`, its auth, retries and errors; the answers
are parsed here into the 2.x SDK's types, mirrored below as the SDK's models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import httpx
import pytest
import together
from together._models import BaseModel

from tests.servers import SluiceServer
from tests.waiting import wait_until

ONE_A_MINUTE = {
    "requests_per_minute": 1,
    "pace_per_minute": None,
    "burst": 1,
    "queue_depth": 0,
    "max_queue_wait_seconds": 0,
}


# The together SDK 2.x's ExecuteResponse and SessionListResponse (generated from Together's
# OpenAPI spec), as far as these tests read them.
class Output(BaseModel):
    type: Literal["stdout", "stderr", "error", "display_data", "execute_result"]
    data: object


class ExecuteData(BaseModel):
    session_id: str
    outputs: list[Output]
    status: str | None = None


class ExecuteResponse(BaseModel):
    data: ExecuteData | None = None
    errors: list[object] | None = None


class SessionRow(BaseModel):
    id: str
    execute_count: int
    started_at: str
    last_execute_at: str
    expires_at: str


class SessionsData(BaseModel):
    sessions: list[SessionRow]


class SessionListResponse(BaseModel):
    data: SessionsData | None = None
    errors: list[object] | None = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    with SluiceServer(tmp_path_factory.mktemp("tci")) as running:
        # The account's ceiling well above what these tests send: a 429 is the key's row's.
        running.make_profile(
            "tci-account",
            {"code_interpreter": {"requests_per_minute": 6000, "burst": 100}},
            account=True,
        )
        yield running


def _client(server: SluiceServer, secret: str) -> together.Together:
    return together.Together(base_url=server.url, api_key=secret, max_retries=0)


def _execute(client: together.Together, code: str, **more: object) -> ExecuteResponse:
    body = {"code": code, "language": "python", **more}
    return client.post("/v1/tci/execute", body=body, cast_to=ExecuteResponse)


def _sessions(client: together.Together) -> SessionListResponse:
    return client.get("/v1/tci/sessions", cast_to=SessionListResponse)


def _usage_rows(server: SluiceServer, team: str) -> list[dict]:
    out = server.python(
        "import json\n"
        "from limiter.usage.models import UsageRollup\n"
        f"rows = UsageRollup.objects.filter(team_name={team!r}, endpoint='code_interpreter')\n"
        "print(json.dumps([{'model': r.model, 'requests': r.requests, 'units': r.units,"
        " 'status': r.status_class, 'cost': str(r.cost.normalize())} for r in rows]))\n"
    )
    return json.loads(out)


def _refusal(server: SluiceServer, team: str) -> list[str]:
    return server.python(
        "from limiter.models import Refusal\n"
        f"r = Refusal.objects.filter(team_name={team!r}, endpoint='code_interpreter').first()\n"
        "print(r.reason, r.source, r.endpoint) if r else print('none')\n"
    ).split()


def test_a_session_started_reused_listed_and_billed_once(server: SluiceServer) -> None:
    client = _client(server, server.issue_key("tci-team"))

    first = _execute(client, "x = 42\nprint('hello')")
    assert first.errors is None and first.data is not None
    session = first.data.session_id
    assert [(o.type, o.data) for o in first.data.outputs] == [("stdout", "hello\n")]
    # The same session keeps its state: x is still there.
    again = _execute(client, "print(x)\nx", session_id=session)
    assert again.data is not None and again.data.session_id == session
    assert [(o.type, o.data) for o in again.data.outputs] == [
        ("stdout", "42\n"),
        ("execute_result", {"text/plain": "42"}),
    ]
    listed = _sessions(client)
    assert listed.data is not None
    assert [(row.id, row.execute_count) for row in listed.data.sessions] == [(session, 2)]

    # Three calls; one session started, billed at Together's $0.03 (the list's row is
    # model-less and free).
    rows = wait_until(
        lambda: _usage_rows(server, "tci-team"),
        lambda found: sum(row["requests"] for row in found) >= 3,
        within=15,
        what="the code interpreter's usage rows",
    )
    billed = [row for row in rows if row["model"] == "together-code-interpreter"]
    assert sum(row["requests"] for row in billed) == 2
    assert sum(row["units"] for row in billed) == 1
    assert sum(float(row["cost"]) for row in rows) == pytest.approx(0.03)
    assert {row["status"] for row in rows} == {"2xx"}


def test_the_root_paths_of_togethers_guide_are_the_same_routes(server: SluiceServer) -> None:
    """Together's guide calls `/tci/execute` at the root; a 3.1 client whose base URL is
    Sluice's root does the same."""
    client = _client(server, server.issue_key("tci-root"))
    ran = client.post(
        "/tci/execute",
        body={"code": "print('root')", "language": "python"},
        cast_to=ExecuteResponse,
    )
    assert ran.data is not None
    assert [(o.type, o.data) for o in ran.data.outputs] == [("stdout", "root\n")]
    listed = client.get("/tci/sessions", cast_to=SessionListResponse)
    assert listed.data is not None
    assert [row.id for row in listed.data.sessions] == [ran.data.session_id]
    with pytest.raises(together.NotFoundError) as caught:
        client.get("/tci/unknown", cast_to=object)
    assert json.loads(caught.value.response.text)["error"]["code"] == "unknown_url"


def test_code_that_does_not_parse_is_an_error_output(server: SluiceServer) -> None:
    client = _client(server, server.issue_key("tci-error"))
    answer = _execute(client, "print(")
    assert answer.data is not None
    assert [o.type for o in answer.data.outputs] == ["error"]


def test_an_unknown_session_is_a_404_before_together_hears_of_it(server: SluiceServer) -> None:
    client = _client(server, server.issue_key("tci-unknown"))
    for session_id in ("ses_never_started", "../../v1/files", "x" * 300):
        with pytest.raises(together.NotFoundError) as caught:
            _execute(client, "print(1)", session_id=session_id)
        error = json.loads(caught.value.response.text)["error"]
        assert error["code"] == "not_found" and error["param"] == "session_id"
    assert _sessions(client).data == SessionsData(sessions=[])


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"language": "python"}, "missing_field", "code"),
        ({"code": "1", "language": 3}, "invalid_type", "language"),
        ({"code": "1", "language": "python", "session_id": 7}, "invalid_type", "session_id"),
        ({"code": "1", "language": "python", "files": "a.py"}, "invalid_type", "files"),
    ],
)
def test_a_bad_execute_body_is_a_400(
    server: SluiceServer, body: dict, code: str, param: str
) -> None:
    secret = server.issue_key("tci-bad")
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {secret}"}, timeout=30
    ) as http:
        answer = http.post("/v1/tci/execute", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_a_tight_code_interpreter_row_refuses_with_429_recorded(server: SluiceServer) -> None:
    server.make_profile("tci-tight", {"code_interpreter": ONE_A_MINUTE})
    client = _client(server, server.issue_key("tci-429", profile="tci-tight"))

    _execute(client, "print(1)")
    with pytest.raises(together.RateLimitError) as caught:
        _execute(client, "print(2)")

    assert caught.value.response.headers["x-sluice-limited-by"] == "gateway"
    assert json.loads(caught.value.response.text)["error"]["code"] == "rate_limited"
    assert 55 <= int(caught.value.response.headers["retry-after"]) <= 60
    recorded = wait_until(
        lambda: _refusal(server, "tci-429"),
        lambda row: row != ["none"],
        within=15,
        what="the 429 to be recorded",
    )
    assert recorded == ["rate_limited", "gateway", "code_interpreter"]


def test_a_dollar_budget_counts_the_sessions_started(server: SluiceServer) -> None:
    """A $0.05 budget: a started session is $0.03, reported to the budget book at once, so
    the second session starts ($0.03 spent, under $0.05) and the third call is refused with
    `budget_exceeded`, recorded; a call reusing a session is refused too (the budget is
    spent, whatever the call costs). Listing the sessions spends nothing, so it is still
    answered: a team over its budget can see what it started."""
    client = _client(server, server.issue_key("tci-budget"))
    with httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    ) as ops:
        team = next(t["id"] for t in ops.get("/teams").json() if t["name"] == "tci-budget")
        made = ops.post(
            f"/teams/{team}/budgets", json={"unit": "dollars", "period": "day", "limit": "0.05"}
        )
        assert made.status_code == 201, made.text
        first = _execute(client, "print(1)")
        assert first.data is not None
        _execute(client, "print(2)")
        for more in ({}, {"session_id": first.data.session_id}):
            with pytest.raises(together.RateLimitError) as caught:
                _execute(client, "print(3)", **more)
            assert json.loads(caught.value.response.text)["error"]["code"] == "budget_exceeded"
        listed = _sessions(client)
        assert listed.data is not None
        assert first.data.session_id in [row.id for row in listed.data.sessions]
    recorded = wait_until(
        lambda: _refusal(server, "tci-budget"),
        lambda row: row != ["none"],
        within=15,
        what="the 429 to be recorded",
    )
    assert recorded == ["budget_exceeded", "gateway", "code_interpreter"]
