"""A team's files are its own: naming another team's file anywhere is answered as an
unknown file, before Together hears of it (issue 8, item 1), file ids never reach an
upstream path unchecked (item 3), and secrets in job bodies are not kept (item 4).

Real HTTP against `manage.py serve` and the in-process sandbox; the database is read
directly (SQLite) to check what was, and was not, stored.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from limiter.gateway.jobs import MSG_FILE_NOT_FOUND
from tests.jobs.conftest import MODEL, batch_lines
from tests.upstream_log import upstream_calls
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def server(shared_server: Any) -> Any:
    shared_server.sandbox.configure(
        {"fine_tune_seconds": 1.0, "batch_seconds": 1.0, "max_running_fine_tunes": 50}
    )
    return shared_server


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/v1", timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def query(server: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    path = server.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(sql, params).fetchall()


def team_files(server: Any, team: str) -> set[str]:
    rows = query(
        server,
        "SELECT f.file_id FROM limiter_teamfile f JOIN limiter_team t ON t.id = f.team_id "
        "WHERE t.name = ?",
        team,
    )
    return {row[0] for row in rows}


def team_jobs(server: Any, team: str) -> list[tuple[Any, ...]]:
    return query(
        server,
        "SELECT j.public_id, j.request FROM limiter_job j JOIN limiter_team t ON t.id = j.team_id "
        "WHERE t.name = ?",
        team,
    )


def upload(http: httpx.Client, key: str, content: bytes, purpose: str = "fine-tune") -> str:
    answer = http.post(
        "/files", headers=auth(key), data={"purpose": purpose}, files={"file": ("f.jsonl", content)}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def assert_unknown_file(answer: httpx.Response, file_id: str, param: str | None) -> None:
    assert answer.status_code == 404, answer.text
    assert answer.json() == {
        "error": {
            "message": MSG_FILE_NOT_FOUND.format(id=file_id),
            "type": "not_found_error",
            "param": param,
            "code": "not_found",
        }
    }


@pytest.fixture
def teams(server: Any, http: httpx.Client, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Two teams, each with a key and a file of its own (names unique to the test)."""
    name = request.node.name.removeprefix("test_")[:40]
    alpha, beta = f"{name}-a", f"{name}-b"
    keys = {alpha: server.issue_key(alpha), beta: server.issue_key(beta)}
    return {
        "a": alpha,
        "b": beta,
        "a_key": keys[alpha],
        "b_key": keys[beta],
        "a_file": upload(http, keys[alpha], batch_lines(2), "batch-api"),
        "b_file": upload(http, keys[beta], b'{"text": "beta secret data"}\n'),
    }


def test_batch_naming_another_teams_output_file_is_404(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    a_key, b_file = teams["a_key"], teams["b_file"]
    files_before = team_files(server, teams["a"])
    with upstream_calls(server.sandbox) as calls:
        answer = http.post(
            "/batches",
            headers=auth(a_key),
            json={
                "endpoint": "/v1/chat/completions",
                "input_file_id": teams["a_file"],
                "output_file_id": b_file,
            },
        )
    assert_unknown_file(answer, b_file, "output_file_id")
    assert team_jobs(server, teams["a"]) == []
    assert team_files(server, teams["a"]) == files_before
    assert calls == []
    # ...and the file stays out of reach, as it always was.
    assert_unknown_file(http.get(f"/files/{b_file}/content", headers=auth(a_key)), b_file, None)
    assert b_file not in [f["id"] for f in http.get("/files", headers=auth(a_key)).json()["data"]]


def test_batch_naming_another_teams_error_file_is_404(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    answer = http.post(
        "/batches",
        headers=auth(teams["a_key"]),
        json={
            "endpoint": "/v1/chat/completions",
            "input_file_id": teams["a_file"],
            "error_file_id": teams["b_file"],
        },
    )
    assert_unknown_file(answer, teams["b_file"], "error_file_id")
    assert team_jobs(server, teams["a"]) == []


def test_fine_tune_naming_another_teams_validation_file_is_404(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    a_key, b_file = teams["a_key"], teams["b_file"]
    training = upload(http, a_key, b'{"text": "alpha"}\n')
    created = server.sandbox.stats()["fine_tunes"]["created"]
    with upstream_calls(server.sandbox) as calls:
        answer = http.post(
            "/fine-tunes",
            headers=auth(a_key),
            json={"model": MODEL, "training_file": training, "validation_file": b_file},
        )
    assert_unknown_file(answer, b_file, "validation_file")
    assert team_jobs(server, teams["a"]) == []
    assert calls == []
    assert server.sandbox.stats()["fine_tunes"]["created"] == created


@pytest.mark.parametrize("field", ["reference_file", "eval_file_id"])
def test_any_file_field_naming_another_teams_file_is_404(
    server: Any, http: httpx.Client, teams: dict, field: str
) -> None:
    # Fields Together may add later: any top-level *_file / *_file_id names a file.
    training = upload(http, teams["a_key"], b'{"text": "alpha"}\n')
    answer = http.post(
        "/fine-tunes",
        headers=auth(teams["a_key"]),
        json={"model": MODEL, "training_file": training, field: teams["b_file"]},
    )
    assert_unknown_file(answer, teams["b_file"], field)
    assert team_jobs(server, teams["a"]) == []


def test_estimate_price_naming_another_teams_file_is_404(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    with upstream_calls(server.sandbox) as calls:
        answer = http.post(
            "/fine-tunes/estimate-price",
            headers=auth(teams["a_key"]),
            json={"model": MODEL, "training_file": teams["b_file"]},
        )
    assert_unknown_file(answer, teams["b_file"], "training_file")
    assert calls == []
    own = http.post(
        "/fine-tunes/estimate-price",
        headers=auth(teams["b_key"]),
        json={"model": MODEL, "training_file": teams["b_file"], "validation_file": ""},
    )
    assert own.status_code == 200, own.text


def test_a_jobs_output_file_is_its_teams_once_together_reports_it(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    a_key = teams["a_key"]
    created = http.post(
        "/batches",
        headers=auth(a_key),
        json={"endpoint": "/v1/chat/completions", "input_file_id": teams["a_file"]},
    )
    assert created.status_code == 201, created.text
    batch = wait_until(
        lambda: http.get(f"/batches/{created.json()['job']['id']}", headers=auth(a_key)).json(),
        lambda b: b["status"] == "COMPLETED",
        within=30.0,
        every=0.1,
    )
    output = batch["output_file_id"]
    assert output and output in team_files(server, teams["a"])
    assert output not in team_files(server, teams["b"])
    content = http.get(f"/files/{output}/content", headers=auth(a_key))
    assert content.status_code == 200 and len(content.content.splitlines()) == 2
    assert output in [f["id"] for f in http.get("/files", headers=auth(a_key)).json()["data"]]
    assert_unknown_file(
        http.get(f"/files/{output}/content", headers=auth(teams["b_key"])), output, None
    )


@pytest.mark.parametrize("file_id", ["..%2F..", "file-1%3Fx%3D1", "a" * 101])
def test_malformed_file_id_is_404_without_an_upstream_call(
    server: Any, http: httpx.Client, teams: dict, file_id: str
) -> None:
    # Even a stored row (as the old request-based ownership could make one) does not let
    # something that is not an id into an upstream path.
    server.python(
        "from limiter.jobs.models import TeamFile\n"
        f"TeamFile.objects.create(team_id={team_id(server, teams['a'])}, "
        f"file_id={httpx.URL('/' + file_id).path[1:]!r})\n"
    )
    with upstream_calls(server.sandbox) as calls:
        for path in (f"/files/{file_id}", f"/files/{file_id}/content"):
            answer = http.get(path, headers=auth(teams["a_key"]))
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["type"] == "not_found_error"
    assert calls == []


def team_id(server: Any, team: str) -> int:
    return query(server, "SELECT id FROM limiter_team WHERE name = ?", team)[0][0]


def test_secrets_in_a_fine_tune_are_sent_but_never_kept_or_shown(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    a_key = teams["a_key"]
    training = upload(http, a_key, b'{"text": "alpha"}\n')
    secrets = {
        "wandb_api_key": "wandb-s3cret",
        "hf_api_token": "hf-s3cret",
        "other_secret": "o-s3cret",
    }
    answer = http.post(
        "/fine-tunes",
        headers=auth(a_key),
        json={"model": MODEL, "training_file": training, **secrets},
    )
    assert answer.status_code == 200, answer.text
    assert not set(secrets) & set(answer.json())
    upstream = [
        job.request
        for job in server.sandbox.app.state.fine_tunes.values()
        if job.request.get("training_file") == training
    ]
    assert [{name: request.get(name) for name in secrets} for request in upstream] == [secrets]
    [(public_id, stored)] = team_jobs(server, teams["a"])
    assert {name: json.loads(stored)[name] for name in secrets} == dict.fromkeys(
        secrets, "[redacted]"
    )
    for shown in (
        http.get(f"/fine-tunes/{public_id}", headers=auth(a_key)).text,
        http.get("/fine-tunes", headers=auth(a_key)).text,
    ):
        assert not any(value in shown for value in secrets.values())
        assert not any(name in shown for name in secrets)
