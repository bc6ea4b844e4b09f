"""The team API's one exception root and its OpenAI-shaped error body.

`{"error": {"message", "type", "param", "code"}}` with the right status, on every
failure path. Messages are constants so tests can assert on them.
"""

from __future__ import annotations

import json
from typing import Any

from limiter import logs

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"
UPSTREAM = "upstream_error"

MSG_BAD_JSON = "The request body is not valid JSON."
MSG_BODY_NOT_OBJECT = "The request body must be a JSON object."
MSG_BODY_TOO_LARGE = "The request body is larger than {limit} bytes."
MSG_NO_KEY = "No API key provided. Send 'Authorization: Bearer sk-sluice-...'."
MSG_BAD_KEY = "Invalid API key: unknown, revoked or expired."
MSG_TOO_MANY_AUTH_FAILURES = (
    "Too many failed authentication attempts from this address; retry later."
)
MSG_UNKNOWN_ROUTE = (
    "Unknown request URL: {method} {path}. Sluice does not serve this route; the routes it "
    "serves are listed in its README."
)
MSG_ROUTE_REFUSED = (
    "{method} {path} is {what}, an organisation-level route of Together: Sluice does not let "
    "teams use it unless the operators allow it (a row for '{kind}' in the team's limit profile)."
)
# Bounded: the path is the caller's, and the message must not reflect a long one whole.
MAX_ECHOED_PATH = 200
MSG_METHOD_NOT_ALLOWED = "Method {method} is not allowed for {path}."
MSG_LIMITER_DOWN = (
    "Sluice's limiter did not answer in time; the request was not sent upstream. Retry shortly."
)
MSG_UPSTREAM_DOWN = (
    "Together could not be reached (request id {request_id}); the operators can see why."
)
MSG_UPSTREAM_OVERLOADED = (
    "Together stayed overloaded (HTTP {status}) after {attempts} attempts within the deadline."
)
MSG_UPSTREAM_TIMEOUT = "Together did not answer within the deadline."
MSG_UPSTREAM_RATE_LIMITED = (
    "Together refused the request with 429 after {attempts} attempts: {detail}"
)
MSG_TEAM_PAUSED = "Team '{team}' is paused by the operators; no requests are sent for it."
MSG_MODEL_NOT_FOUND = "The model '{model}' does not exist or is not available.{hint}"
MSG_INTERNAL = "Sluice failed to handle this request (request id {request_id}); it was logged."
MSG_FIELD_REQUIRED = "'{field}' is required."
MSG_FIELD_NOT_STRING = "'{field}' must be a string."
MSG_FIELD_NOT_BOOLEAN = "'{field}' must be true or false."
MSG_MODEL_TOO_LONG = "'model' must be at most {limit} characters."
MSG_TEXT_NOT_STORABLE = (
    "The request body holds a NUL character or an unpaired surrogate (such as \\u0000 or "
    "\\ud800): no text Sluice stores or forwards may."
)
MSG_NUMBER_OUT_OF_RANGE = (
    "The request body holds a number out of range: numbers must be finite and fit in 64 bits."
)
MSG_INTEGER_OUT_OF_RANGE = "'{field}' must be an integer from {low} to {high}."
MSG_BAD_HEADER = "The header '{header}' must be printable ASCII: Sluice forwards it to Together."
MSG_JSON_TOO_DEEP = "The request body is nested deeper than {depth} levels."

# Caller-chosen text echoed in an error is bounded: no model id is longer than this
# (the 429 record keeps as much), and a message is not a way to reflect a 4 MiB body.
MAX_ECHOED_MODEL = 200
# Deeper JSON is refused before anything walks it; real requests (tool schemas
# included) stay far below this.
MAX_JSON_DEPTH = 64
# A body field is named in `error.param` only when its name is this short.
MAX_PARAM_NAME = 64


class ApiError(Exception):
    """An error answered to the caller in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}  # more fields for the error object (a 429's retry_after...)

    def body(self) -> bytes:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        error.update(self.extra)
        return json.dumps({"error": error}).encode()


def refused_route(*, method: str, path: str, kind: str, what: str) -> ApiError:
    """The 403 for a Together route Sluice understands but does not let this team use,
    naming the route, what it is and how ops allow it (docs/routes.md)."""
    return ApiError(
        403,
        MSG_ROUTE_REFUSED.format(method=method[:16], path=_echoed_path(path), what=what, kind=kind),
        type=PERMISSION,
        code="route_not_allowed",
    )


def upstream_unreachable() -> ApiError:
    """Together gave no answer at all. The caller learns which request failed, not where
    the upstream lives: the detail (host, port, error) is logged with the request id and
    shown on the dashboard (limiter/upstream.py records it)."""
    return ApiError(
        502,
        MSG_UPSTREAM_DOWN.format(request_id=logs.request_id.get()),
        type=UPSTREAM,
        code="upstream_unreachable",
    )


def invalid_key() -> ApiError:
    """What a call with an unknown, revoked or expired key is answered."""
    return ApiError(401, MSG_BAD_KEY, type=AUTHENTICATION, code="invalid_api_key")


def unknown_route(method: str, path: str) -> ApiError:
    """What every path under /v1/ or /v2/ that Sluice does not serve is answered: a 404 in
    OpenAI's (and Together's) shape naming the route, never Django's HTML page. The one
    answer for every unserved route: the router uses it, and so may a handler."""
    return ApiError(
        404,
        MSG_UNKNOWN_ROUTE.format(method=method[:16], path=_echoed_path(path)),
        type=NOT_FOUND,
        code="unknown_url",
    )


def _echoed_path(path: str) -> str:
    return path if len(path) <= MAX_ECHOED_PATH else path[:MAX_ECHOED_PATH] + "..."


def team_paused(team: str) -> ApiError:
    """What a call of a paused team is answered."""
    return ApiError(403, MSG_TEAM_PAUSED.format(team=team), type=PERMISSION, code="team_paused")


# --- reading Together's error bodies -----------------------------------------------------
def _upstream_error_object(content: bytes) -> dict[str, Any]:
    # Together's usual `{"error": {...}}`, or the batch endpoints' `{"error": "text"}`.
    try:
        data = json.loads(content)
    except ValueError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return (
        error if isinstance(error, dict) else ({"message": error} if isinstance(error, str) else {})
    )


def upstream_message(content: bytes) -> str:
    return str(
        _upstream_error_object(content).get("message")
        or content[:300].decode(errors="replace")
        or "no detail"
    )


def upstream_type(content: bytes, status: int) -> str:
    return str(
        _upstream_error_object(content).get("type")
        or (INVALID_REQUEST if status < 500 else UPSTREAM)
    )


def upstream_code(content: bytes) -> str | None:
    code = _upstream_error_object(content).get("code")
    return str(code) if code is not None else None
