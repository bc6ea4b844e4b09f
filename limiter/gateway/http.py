"""A minimal request/response layer over raw ASGI for the team API.

The team API does not go through Django's request machinery: under ASGI, Django's
middleware stack costs milliseconds of CPU per request (sync middleware runs in
threads), which is more than everything Sluice itself does. The dashboard and the ops
API stay on Django; this layer is only what /v1/ needs.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from limiter.gateway.errors import (
    MAX_JSON_DEPTH,
    MAX_PARAM_NAME,
    MSG_BAD_JSON,
    MSG_BODY_NOT_OBJECT,
    MSG_JSON_TOO_DEEP,
    MSG_NUMBER_OUT_OF_RANGE,
    MSG_TEXT_NOT_STORABLE,
    ApiError,
)
from limiter.gateway.keys import KeyInfo

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from limiter.gateway.context import Handles
    from limiter.gateway.revocation import Call

JSON_TYPE = b"application/json"


# Text no supported database can store (PostgreSQL refuses NUL in text and jsonb; a lone
# surrogate, which JSON can escape, is not UTF-8), nor Together read.
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
# Every number in a body fits a 64-bit integer or is a finite float: what a database
# column, a jsonb value, msgpack (the Redis channel layer) and Together can all hold.
MAX_JSON_INT = 2**63 - 1


def _json_problem(value: Any, depth_limit: int) -> tuple[str, str | None] | None:
    """The first thing in a parsed body no part of Sluice may be handed, and the top-level
    field it is in: ("depth" | "text" | "number", field). One walk, a loop: this runs on
    whatever a caller sent."""
    stack: list[tuple[Any, int, str | None]] = [(value, 1, None)]
    while stack:
        node, depth, field_name = stack.pop()
        if isinstance(node, str):
            if UNSTORABLE_TEXT.search(node):
                return "text", field_name
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not -MAX_JSON_INT - 1 <= node <= MAX_JSON_INT:
                return "number", field_name
        elif isinstance(node, float):
            if not math.isfinite(node):  # NaN, Infinity, or 1e999 read as inf
                return "number", field_name
        elif isinstance(node, dict):
            if depth > depth_limit:
                return "depth", None
            for name, child in node.items():
                at = name if depth == 1 else field_name
                if UNSTORABLE_TEXT.search(name):
                    return "text", None if depth == 1 else field_name
                stack.append((child, depth + 1, at))
        elif isinstance(node, list):
            if depth > depth_limit:
                return "depth", None
            stack.extend((child, depth + 1, field_name) for child in node)
    return None


def _refused_body(problem: tuple[str, str | None]) -> ApiError:
    kind, field_name = problem
    # The field is named only when its name is itself plain text (it is echoed).
    param = field_name if field_name and len(field_name) <= MAX_PARAM_NAME else None
    if kind == "depth":
        logger.warning("refused: request body nested deeper than %d levels", MAX_JSON_DEPTH)
        return ApiError(400, MSG_JSON_TOO_DEEP.format(depth=MAX_JSON_DEPTH), code="invalid_json")
    if kind == "text":
        logger.warning("refused: request body holds NUL or an unpaired surrogate")
        return ApiError(400, MSG_TEXT_NOT_STORABLE, code="invalid_value", param=param)
    logger.warning("refused: request body holds a number out of range")
    return ApiError(400, MSG_NUMBER_OUT_OF_RANGE, code="invalid_value", param=param)


@dataclass(slots=True)
class Request:
    method: str
    path: str  # without the query string, e.g. "/v1/chat/completions"
    query_string: bytes
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes
    client: str  # the caller's address
    request_id: str
    key: KeyInfo | None = None
    call: Call | None = (
        None  # once authenticated: what a revocation cuts (limiter/gateway/revocation.py)
    )
    path_params: dict[str, str] = field(default_factory=dict)
    # The process's limiter client and refusal sink, handed to each call by the team API.
    handles: Handles | None = None
    _json: Any = None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400 in the OpenAI shape."""
        if self._json is None:
            try:
                value = json.loads(self.body or b"null")
            except (
                ValueError,
                UnicodeDecodeError,
                RecursionError,
            ):  # RecursionError: nested too deep
                raise ApiError(400, MSG_BAD_JSON, code="invalid_json") from None
            if not isinstance(value, dict):
                raise ApiError(400, MSG_BODY_NOT_OBJECT, code="invalid_json")
            # Parsed fine, but refused here, before any quota is spent: what would walk it
            # later (the token estimate) must not be handed a thousand levels, and what is
            # stored or counted must not be handed text no database stores (NUL, a lone
            # surrogate) or a number out of any column's range (10**400, NaN, Infinity).
            problem = _json_problem(value, MAX_JSON_DEPTH)
            if problem is not None:
                raise _refused_body(problem)
            self._json = value
        return self._json

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = JSON_TYPE

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        response = cls(status=status, body=json.dumps(data).encode())
        for name, value in (headers or {}).items():
            response.add_header(name, value)
        return response

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


@dataclass(slots=True)
class StreamingResponse:
    """A response sent chunk by chunk (server-sent events). `chunks` is consumed once;
    `on_close` runs whether the stream ended, failed or the caller went away."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"text/event-stream"
    on_close: Callable[[], Awaitable[None]] | None = None
    # Where sending stands, for a stream cut midway (a revoked key) to end cleanly.
    started: bool = False
    mid_event: bool = False  # the last chunk sent did not end an SSE event

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
