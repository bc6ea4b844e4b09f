"""The error contract both fuzzers assert, in one place (see /work/shared/design.md).

Team API (/v1/): OpenAI's `{"error": {"message", "type", "param", "code"}}`, JSON always
(except a streamed 200), never a 5xx other than the documented upstream/limiter ones.
Ops API (/api/): `{"error": {"code", "message", "fields"}}` on every 4xx.
"""

from __future__ import annotations

import json

import httpx

# Statuses the team API may answer with on its own account: upstream trouble (502/504),
# an overloaded upstream or an unreachable limiter (503). Anything else >= 500 is a bug.
DOCUMENTED_5XX = frozenset({502, 503, 504})


def describe(response: httpx.Response) -> str:
    """The request and answer, short enough for an assertion message."""
    request = response.request
    body = request.content[:200] if request is not None else b""
    return (
        f"{request.method} {request.url} body={body!r} -> {response.status_code} "
        f"{response.headers.get('content-type')!r} {response.content[:300]!r}"
    )


def team_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why a /v1/ answer breaks the contract, or None: a documented status, JSON (a
    streamed 200 aside), and OpenAI's error shape on every 4xx/5xx."""
    if status >= 500 and status not in DOCUMENTED_5XX:
        return f"server error {status}"
    if status == 200 and content_type.startswith("text/event-stream"):
        return None  # a stream: its chunks are the upstream's, passed through
    if content_type.split(";")[0].strip() != "application/json":
        return f"content-type {content_type!r}, not application/json"
    try:
        data = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if status < 400:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "no 'error' object"
    missing = {"message", "type", "param", "code"} - error.keys()
    if missing:
        return f"error object lacks {sorted(missing)}"
    if not (isinstance(error["message"], str) and error["message"]):
        return "error.message must be a non-empty string"
    if not (isinstance(error["type"], str) and error["type"]):
        return "error.type must be a non-empty string"
    if not all(error[name] is None or isinstance(error[name], str) for name in ("param", "code")):
        return "error.param and error.code must be strings or null"
    return None


def assert_team_contract(response: httpx.Response) -> None:
    problem = team_problem(
        response.status_code, response.headers.get("content-type", ""), response.content
    )
    assert problem is None, f"{problem}: {describe(response)}"


def ops_error_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why an ops API 4xx answer breaks `{"error": {"code", "message", "fields"}}`, or None."""
    if not 400 <= status < 500:
        return None
    if content_type.split(";")[0].strip() != "application/json":
        return f"content-type {content_type!r}, not application/json"
    try:
        data = json.loads(body)
    except ValueError:
        return "body is not JSON"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "no 'error' object"
    if set(error) != {"code", "message", "fields"}:
        return f"error keys are {sorted(error)}, not ['code', 'fields', 'message']"
    if not isinstance(error["code"], str) or not isinstance(error["message"], str):
        return "code and message must be strings"
    fields = error["fields"]
    if fields is not None and not (
        isinstance(fields, dict)
        and all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in fields.values())
    ):
        return "fields must be null or {name: [message, ...]}"
    return None
