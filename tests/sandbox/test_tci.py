"""The sandbox's code interpreter: sessions keep their state for 60 minutes, then are gone;
nothing is executed (the code is only read)."""

from __future__ import annotations

import json

import pytest

from sandbox import tci
from sandbox.http import ApiError, Request
from sandbox.state import SandboxState


class Wall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _request(method: str, path: str, body: dict | None = None) -> Request:
    raw = json.dumps(body).encode() if body is not None else b""
    return Request(method, path, {}, {}, raw, "http://127.0.0.1")


def _execute(state: SandboxState, **body: object) -> dict:
    answer = tci.execute(state, _request("POST", "/v1/tci/execute", body), "")
    return json.loads(answer.body)


def test_a_session_keeps_its_names_until_it_expires() -> None:
    wall = Wall()
    state = SandboxState(wall_clock=wall)
    first = _execute(state, code="x = 'kept'", language="python")
    session = first["data"]["session_id"]
    assert first == {
        "data": {"session_id": session, "status": "success", "outputs": []},
        "errors": None,
    }

    wall.now += tci.SESSION_SECONDS - 1
    later = _execute(state, code="print(x, 2)", language="python", session_id=session)
    assert later["data"]["outputs"] == [{"type": "stdout", "data": "kept 2\n"}]
    listed = json.loads(tci.sessions_list(state, _request("GET", "/v1/tci/sessions"), "").body)
    assert [(s["id"], s["execute_count"]) for s in listed["data"]["sessions"]] == [(session, 2)]

    wall.now += 1  # 60 minutes after it started
    with pytest.raises(ApiError) as gone:
        _execute(state, code="x", language="python", session_id=session)
    assert gone.value.status == 404
    listed = json.loads(tci.sessions_list(state, _request("GET", "/v1/tci/sessions"), "").body)
    assert listed["data"]["sessions"] == []


def test_code_is_read_not_run() -> None:
    state = SandboxState()
    answer = _execute(state, code="import os\nos.remove('/etc/passwd')\n1 + 1", language="python")
    assert answer["data"]["outputs"] == []  # neither run nor a known value
    broken = _execute(state, code="def (", language="python")
    assert [o["type"] for o in broken["data"]["outputs"]] == ["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"language": "python"},
        {"code": "1", "language": "ruby"},
        {"code": "1", "language": "python", "files": [{"name": "a.py"}]},
    ],
)
def test_a_bad_body_is_a_400(body: dict) -> None:
    with pytest.raises(ApiError) as refused:
        _execute(SandboxState(), **body)
    assert refused.value.status == 400
