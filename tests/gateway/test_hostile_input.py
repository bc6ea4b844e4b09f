"""Hostile input on /v1/ is a 400 in OpenAI's shape: no 500, no quota spent, no upstream
call, and one log line rather than a traceback.

Each test takes a fresh key whose chat limit admits exactly one request (and counts
tokens), sends the bad requests, then shows the one request is still there to spend.
"""

from __future__ import annotations

import json

import httpx
import pytest

from limiter.gateway import errors
from tests.fuzz.raw import RawResponse, raw_request
from tests.gateway.test_errors import MESSAGES, MODEL, assert_error
from tests.servers import SluiceServer

CHAT = "/v1/chat/completions"
# A short queue lets the good request wait out the shared account's pacing; a second one
# (60 s away) is still refused at once.
ONE_SHOT = {
    "chat": {
        "requests_per_minute": 1,
        "pace_per_minute": None,
        "burst": 1,
        "queue_depth": 1,
        "max_queue_wait_seconds": 2,
        "tokens_per_minute": 1_000_000,
    }
}


@pytest.fixture(scope="module")
def server(shared_server: SluiceServer) -> SluiceServer:
    shared_server.make_profile("one-shot", ONE_SHOT)
    return shared_server


@pytest.fixture
def key(server: SluiceServer, request: pytest.FixtureRequest) -> str:
    return server.issue_key(f"hostile-{request.node.name[:40]}", profile="one-shot")


def chat_requests(server: SluiceServer) -> int:
    return server.sandbox.stats()["chat"]["requests"]


def assert_quota_untouched(server: SluiceServer, key: str, upstream_before: int) -> None:
    """No upstream call was made, and the key's one request is still there to spend."""
    assert chat_requests(server) == upstream_before
    good = httpx.post(
        f"{server.url}{CHAT}",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert good.status_code == 200, good.text
    again = httpx.post(
        f"{server.url}{CHAT}",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert (
        again.status_code == 429 and again.json()["error"]["code"] == "rate_limited"
    )  # the limit is real: the bad calls did not hide behind a loose one


def raw_error(response: RawResponse, status: int, code: str) -> dict:
    assert response.status == status, str(response)
    assert response.content_type == "application/json", str(response)
    error = json.loads(response.body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error


@pytest.mark.parametrize("header", ["x-request-id", "user-agent", "content-type"])
def test_non_ascii_forwarded_header_is_a_400(server: SluiceServer, key: str, header: str) -> None:
    before = chat_requests(server)
    log_before = server.log()
    body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
    headers = [
        ("authorization", f"Bearer {key}".encode()),
        ("content-type", b"application/json"),
        (header, b"caf\xe9"),
    ]  # latin-1: daphne lets it through, httpx cannot encode it
    if header == "content-type":
        headers = [headers[0], headers[2]]
    error = raw_error(
        raw_request(server.url, "POST", CHAT, headers=headers, body=body), 400, "invalid_header"
    )
    assert error["param"] == header
    assert error["message"] == errors.MSG_BAD_HEADER.format(header=header)
    assert_quota_untouched(server, key, before)
    logged = server.log()[len(log_before) :]
    assert "Traceback" not in logged
    assert sum(header in line and "refused" in line for line in logged.splitlines()) == 1


def test_non_ascii_content_type_on_the_files_passthrough_is_a_400(
    server: SluiceServer, key: str
) -> None:
    before = server.sandbox.stats()["files"]["count"]
    response = raw_request(
        server.url,
        "POST",
        "/v1/files",
        body=b"purpose=fine-tune",
        headers=[
            ("authorization", f"Bearer {key}".encode()),
            ("content-type", b"text/plain; charset=\xe9"),
        ],
    )
    raw_error(response, 400, "invalid_header")
    assert server.sandbox.stats()["files"]["count"] == before


def test_deeply_nested_json_on_a_token_limited_key_is_a_400(server: SluiceServer, key: str) -> None:
    before = chat_requests(server)
    log_before = server.log()
    deep = json.dumps({"model": MODEL, "messages": "HOLE"}).replace('"HOLE"', "[" * 600 + "]" * 600)
    response = httpx.post(
        f"{server.url}{CHAT}", content=deep, headers={"authorization": f"Bearer {key}"}
    )
    error = assert_error(response, 400, "invalid_json")
    assert error["message"] == errors.MSG_JSON_TOO_DEEP.format(depth=errors.MAX_JSON_DEPTH)
    assert_quota_untouched(server, key, before)
    assert "Traceback" not in server.log()[len(log_before) :]


@pytest.mark.parametrize("stream", ["yes", 1, "true", [True], {"on": True}])
def test_non_boolean_stream_is_a_400(server: SluiceServer, key: str, stream: object) -> None:
    before = chat_requests(server)
    response = httpx.post(
        f"{server.url}{CHAT}",
        json={"model": MODEL, "messages": MESSAGES, "stream": stream},
        headers={"authorization": f"Bearer {key}"},
    )
    error = assert_error(response, 400, "invalid_type")
    assert error["param"] == "stream"
    assert_quota_untouched(server, key, before)


def test_stream_false_and_null_are_plain_answers(server: SluiceServer, key: str) -> None:
    for stream in (False, None):
        response = httpx.post(
            f"{server.url}{CHAT}",
            json={"model": MODEL, "messages": MESSAGES, "stream": stream},
            headers={"authorization": f"Bearer {key}"},
        )
        assert response.status_code in (200, 429)
        assert response.headers["content-type"].startswith("application/json")


def test_a_huge_model_name_is_never_echoed_whole(server: SluiceServer, key: str) -> None:
    before = chat_requests(server)
    model = "org/" + "m" * 20_000
    response = httpx.post(
        f"{server.url}{CHAT}",
        json={"model": model, "messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
    )
    error = assert_error(response, 400, "invalid_value")
    assert error["param"] == "model"
    assert "m" * (errors.MAX_ECHOED_MODEL + 1) not in response.text
    assert_quota_untouched(server, key, before)


def test_a_model_name_that_is_not_text_is_a_400_and_records_nothing(
    server: SluiceServer, key: str
) -> None:
    """A lone surrogate, which JSON can escape, is no model id: refused at the edge. It once
    reached the usage record, whose every flush then failed on it."""
    before = chat_requests(server)
    response = httpx.post(
        f"{server.url}{CHAT}",
        content=b'{"model": "org/\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    error = assert_error(response, 400, "invalid_value")
    assert error["param"] == "model"
    assert_quota_untouched(server, key, before)


def test_an_unknown_model_is_echoed_at_most_200_characters(server: SluiceServer) -> None:
    key = server.issue_key("hostile-unknown-model")
    model = "org/" + "x" * (
        errors.MAX_ECHOED_MODEL - 4
    )  # exactly at the limit: still a 404 naming it
    response = httpx.post(
        f"{server.url}{CHAT}",
        json={"model": model, "messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    error = assert_error(response, 404, "model_not_found")
    assert model in error["message"]
