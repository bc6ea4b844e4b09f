"""Minimal ASGI plumbing: a parsed request, a response value, and Together's error shapes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OVERLOADED_MESSAGE = "The server is overloaded or not ready yet."


@dataclass
class Request:
    method: str
    path: str  # with the mount prefix removed
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    base_url: str  # scheme://host[:port]{prefix}, for URLs the sandbox hands out

    def json(self) -> Any:
        """The body as JSON; an empty body is an empty object, as Together treats it."""
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Invalid JSON body: {exc}") from exc

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise ApiError(400, "Request body must be a JSON object")
        return data

    def api_key(self) -> str:
        scheme, _, key = self.headers.get("authorization", "").partition(" ")
        return key.strip() if scheme.lower() == "bearer" else ""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Set for server-sent events; the body is then ignored.
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    content_type: str = "application/json"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data).encode(), dict(headers or {}))


class ApiError(Exception):
    """Any refusal; `plain` selects the batch endpoints' `{"error": "<message>"}` shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.plain = plain

    def response(self) -> Response:
        if self.plain:
            body: dict[str, Any] = {"error": self.message}
        else:
            body = {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        return json_response(body, self.status, self.headers)


def overloaded() -> ApiError:
    return ApiError(503, OVERLOADED_MESSAGE, error_type="server_error")


def model_not_available(model: str) -> ApiError:
    return ApiError(
        404,
        f"Unable to access model {model}. Please visit https://api.together.ai/models "
        "to view the list of supported models.",
        code="model_not_available",
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


async def read_request(scope: Scope, receive: Receive, prefix: str) -> Request:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    headers = {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
    }
    host = headers.get("host") or _server_host(scope)
    return Request(
        method=scope["method"].upper(),
        path=scope["path"][len(prefix) :] or "/",
        query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
        headers=headers,
        body=b"".join(chunks),
        base_url=f"{scope.get('scheme', 'http')}://{host}{prefix}",
    )


def _server_host(scope: Scope) -> str:
    server = scope.get("server") or ("127.0.0.1", 80)
    return f"{server[0]}:{server[1]}"


async def send_response(response: Response, send: Send, disconnected: Callable[[], bool]) -> bool:
    """Send a response; returns False when the client went away during a stream."""
    content_type = "text/event-stream" if response.stream else response.content_type
    headers = [(b"content-type", content_type.encode())]
    if response.stream:
        headers.append((b"cache-control", b"no-cache"))
    else:
        headers.append((b"content-length", str(len(response.body)).encode()))
    headers += [(k.lower().encode(), v.encode()) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if response.stream is None:
        await send({"type": "http.response.body", "body": response.body})
        return True
    async for chunk in response.stream():
        if disconnected():
            return False
        try:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            # Servers raise an OSError subclass on sends after the client has gone.
            return False
    await send({"type": "http.response.body", "body": b""})
    return True
