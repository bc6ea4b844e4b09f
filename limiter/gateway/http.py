"""A minimal request/response layer over raw ASGI for the team API.

The team API does not go through Django's request machinery: under ASGI, Django's
middleware stack costs milliseconds of CPU per request (sync middleware runs in
threads), which is more than everything Sluice itself does. The dashboard and the ops
API stay on Django; this layer is only what /v1/ needs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from limiter.gateway.errors import (
    MAX_JSON_DEPTH,
    MSG_BAD_JSON,
    MSG_BODY_NOT_OBJECT,
    MSG_JSON_TOO_DEEP,
    ApiError,
)
from limiter.keys import KeyInfo

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from limiter.gateway.revocation import Call

JSON_TYPE = b"application/json"


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests lists/objects deeper than `limit`. A loop, not recursion:
    this runs on whatever a caller sent."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        )
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


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
    # A merged embeddings request's callers, each (key, its own request id): a 429 from
    # Together is recorded for each, as it would be had each called alone (coalesce.py).
    callers: list[tuple[KeyInfo, str]] | None = None
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
            # Parsed fine, but whatever walks it later (the token estimate) must not be
            # handed a thousand levels: refused here, before any quota is spent.
            if json_depth_exceeds(value, MAX_JSON_DEPTH):
                logger.warning("refused: request body nested deeper than %d levels", MAX_JSON_DEPTH)
                raise ApiError(
                    400, MSG_JSON_TOO_DEEP.format(depth=MAX_JSON_DEPTH), code="invalid_json"
                )
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
