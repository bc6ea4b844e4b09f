"""The key is checked from the headers before the body is read: a caller without a
valid key is answered 401 (429 once its address keeps failing) without Sluice reading,
or holding, what it sends. Eight concurrent 95 MiB uploads with no key used to raise the
server's memory by 296 MiB.

Served by uvicorn, which hands the application the request as soon as its headers are
in and its body as it arrives. daphne (Twisted) receives a whole body before it calls
the application at all, so there the answer cannot come first; the application still
lets go of the unread body at once (measured by hand: eight such uploads raised daphne's
peak memory by 99 MiB, from 197 MiB before; uvicorn's by 2 MiB, from 690 MiB).
"""

from __future__ import annotations

import json

import httpx
import pytest

from limiter.gateway import errors
from limiter.gateway.app import AUTH_FAILURES_PER_MINUTE
from tests.fuzz.raw import RawResponse, raw_request
from tests.servers import SluiceServer

UPLOAD_BYTES = 95 * 2**20  # under SLUICE_MAX_UPLOAD_BYTES: a 413 would not need the key
# Long enough for a server that reads the body first to be seen waiting for it.
PROMPTLY = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    env = {"SLUICE_SERVER": "uvicorn"}
    with SluiceServer(tmp_path_factory.mktemp("uvicorn"), env=env) as sluice:
        yield sluice


def unsent_body(
    server: SluiceServer, path: str, declared: int, authorization: str | None, source: str
) -> RawResponse:
    """Headers declaring `declared` bytes of body, and no body: an answer must not wait for it."""
    headers = [("content-type", b"application/json"), ("content-length", str(declared).encode())]
    if authorization is not None:
        headers.append(("authorization", authorization.encode()))
    return raw_request(server.url, "POST", path, headers=headers, source=source, timeout=PROMPTLY)


@pytest.mark.parametrize(
    ("authorization", "code"),
    [(None, "missing_api_key"), ("Bearer sk-sluice-not-a-key", "invalid_api_key")],
)
@pytest.mark.parametrize(
    ("path", "declared"),
    [("/v1/files", UPLOAD_BYTES), ("/v1/chat/completions", 3 * 2**20), ("/v1/batches", 2**20)],
)
def test_a_caller_without_a_valid_key_is_refused_before_its_body(
    server: SluiceServer, authorization: str | None, code: str, path: str, declared: int
) -> None:
    response = unsent_body(server, path, declared, authorization, source="127.0.0.41")
    assert response.status == 401, str(response)
    assert json.loads(response.body)["error"]["code"] == code


def test_the_auth_failure_throttle_still_applies(server: SluiceServer) -> None:
    source = "127.0.0.42"
    for i in range(AUTH_FAILURES_PER_MINUTE):
        response = unsent_body(server, "/v1/files", UPLOAD_BYTES, f"Bearer sk-bad-{i}", source)
        assert response.status == 401, f"failure {i + 1}: {response}"
    response = unsent_body(server, "/v1/files", UPLOAD_BYTES, "Bearer sk-bad-again", source)
    assert response.status == 429, str(response)
    assert json.loads(response.body)["error"]["message"] == errors.MSG_TOO_MANY_AUTH_FAILURES


def test_a_valid_key_still_uploads(server: SluiceServer) -> None:
    key = server.issue_key("uploader")
    content = b'{"text": "kept"}\n' * 60_000  # about 1 MiB, sent in many chunks
    response = httpx.post(
        f"{server.url}/v1/files",
        headers={"authorization": f"Bearer {key}"},
        data={"purpose": "fine-tune"},
        files={"file": ("train.jsonl", content)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    file_id = response.json()["id"]
    stored = httpx.get(
        f"{server.url}/v1/files/{file_id}/content",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert stored.content == content
