"""SandboxApp: a pure ASGI 3 imitation of Together AI's API, for tests and demos.

Routing, auth, limits and fault injection live here; endpoint bodies are built in
inference.py and resources.py, and all mutable data sits in state.py.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
from collections.abc import Callable
from typing import Any

from . import audio, endpoints, extras, resources, tci
from .catalog import is_known, model_list
from .config import SandboxConfig
from .dynamic import REQUEST_LIMITED, TOKEN_LIMITED, DynamicDecision
from .http import (
    ApiError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    json_response,
    model_not_available,
    new_request_id,
    overloaded,
    read_request,
    send_response,
)
from .inference import HANDLERS
from .ratelimit import Decision
from .state import SandboxState
from .textgen import TINY_PNG

RouteHandler = Callable[[SandboxState, Request, str], Response]

# What x-ratelimit-* report when a kind has no limit configured: plausible, Together-sized.
UNLIMITED_REPORTED_RPS = 600

# The dynamic mode's 429 messages; tests assert on them.
DYNAMIC_REQUEST_LIMITED_MESSAGE = (
    "You have exceeded the dynamic request rate limit of {limit} requests per second "
    "({rate} per minute) for model {model}. Retry in {reset:.2f} seconds."
)
DYNAMIC_TOKEN_LIMITED_MESSAGE = (
    "You have exceeded the dynamic token rate limit of {limit} tokens per second "
    "({rate} per minute) for model {model}. Retry in {reset:.2f} seconds."
)

_INFERENCE_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/images/generations": "images",
    "/v1/rerank": "rerank",
    "/v1/audio/speech": "audio_speech",
    "/v1/audio/transcriptions": "audio_transcription",
    "/v1/audio/translations": "audio_transcription",
}
# The kinds whose body is a multipart form, not JSON.
_FORM_KINDS = frozenset({"audio_transcription"})
_HANDLERS = {**HANDLERS, "audio_speech": audio.speech, "audio_transcription": audio.transcription}

# (method, path pattern, handler); the optional group is the resource id.
_ROUTES: list[tuple[str, re.Pattern[str], RouteHandler]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in (
        ("POST", r"/v1/files", resources.files_create),
        ("GET", r"/v1/files", resources.files_list),
        ("GET", r"/v1/files/([^/]+)", resources.file_retrieve),
        ("DELETE", r"/v1/files/([^/]+)", resources.file_delete),
        ("GET", r"/v1/files/([^/]+)/content", resources.file_content),
        ("POST", r"/v1/files/([^/]+)/preprocess", resources.file_preprocess),
        ("PUT", resources.UPLOAD_PATH + r"/([^/]+)", resources.file_put_bytes),
        ("GET", r"/v1/fine-tunes/models/limits", resources.fine_tune_model_limits),
        ("POST", r"/v1/fine-tunes/estimate-price", resources.fine_tune_estimate_price),
        ("POST", r"/v1/fine-tunes", resources.fine_tunes_create),
        ("GET", r"/v1/fine-tunes", resources.fine_tunes_list),
        ("GET", r"/v1/fine-tunes/([^/]+)", resources.fine_tune_retrieve),
        ("POST", r"/v1/fine-tunes/([^/]+)/cancel", resources.fine_tune_cancel),
        ("GET", r"/v1/fine-tunes/([^/]+)/events", resources.fine_tune_events),
        ("POST", r"/v1/batches", resources.batches_create),
        ("GET", r"/v1/batches", resources.batches_list),
        ("GET", r"/v1/batches/([^/]+)", resources.batch_retrieve),
        ("POST", r"/v1/batches/([^/]+)/cancel", resources.batch_cancel),
        *endpoints.ROUTES,
        ("GET", r"/v1/voices", audio.voices),
        *extras.ROUTES,  # videos, evaluations, the fine-tune extras
        *tci.ROUTES,  # the code interpreter
    )
]

# Paths that answer without an API key: the signed upload URL and the test harness's own.
_OPEN_PREFIXES = (resources.UPLOAD_PATH + "/", "/sandbox/")

_INJECTED_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Injected bad request."),
    401: ("invalid_request_error", "Invalid API key provided."),
    402: ("credit_limit", "Credit limit exceeded. Please add credits to your account."),
    500: ("server_error", "Internal server error."),
    502: ("server_error", "Bad gateway."),
    504: ("timeout", "The request timed out."),
}


class SandboxApp:
    """ASGI application. `prefix` mounts it under a path, e.g. "/sandbox" → /sandbox/v1/..."""

    def __init__(self, config: SandboxConfig | None = None, prefix: str = "") -> None:
        self.state = SandboxState(config)
        self.prefix = prefix.rstrip("/")

    # Python-side control, the same as the HTTP endpoints.
    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        return self.state.configure(patch)

    def reset(self) -> None:
        self.state.reset()

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # Other scopes (websocket) are not Together's; returning closes them.

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await read_request(scope, receive, self.prefix)
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            response = await self._respond(request, scope["path"], gone)
            await self._send(response, send, gone)
        finally:
            watcher.cancel()

    async def _respond(
        self, request: Request, full_path: str, gone: asyncio.Event | None = None
    ) -> Response:
        """Any failure becomes a JSON error: callers never see a traceback."""
        request_id = new_request_id()
        try:
            if not full_path.startswith(self.prefix + "/") and full_path != self.prefix:
                raise ApiError(404, f"Unknown path {full_path}", code="not_found")
            response = await self._dispatch(request, gone or asyncio.Event())
        except ApiError as error:
            response = error.response()
        except Exception as exc:  # any bug must still answer in Together's error shape
            response = ApiError(
                500, f"Sandbox internal error: {type(exc).__name__}", error_type="server_error"
            ).response()
        response.headers.setdefault("x-request-id", request_id)
        return response

    async def _send(self, response: Response, send: Send, gone: asyncio.Event) -> None:
        if response.stream is None:
            await send_response(response, send, gone.is_set)
            return
        streams = self.state.streams
        streams["started"] += 1
        finished = False
        try:
            finished = await send_response(response, send, gone.is_set)
        finally:
            # A server may cancel us when the client leaves; count that as a disconnect too.
            streams["completed" if finished else "disconnected"] += 1

    async def _dispatch(self, request: Request, gone: asyncio.Event) -> Response:
        path = request.path
        if path.startswith("/sandbox/"):
            return self._control(request)
        if not path.startswith(_OPEN_PREFIXES):
            self._authenticate(request)
        # Counted after auth so that requests == ok + status_429 + status_503 + other_errors.
        kind = _INFERENCE_PATHS.get(path)
        if kind is not None and request.method != "POST":
            raise ApiError(405, f"Method {request.method} not allowed on {path}")
        self.state.note_request(kind, request.headers)
        if kind is not None:
            return await self._inference(kind, request)
        if path == "/v1/models" and request.method == "GET":
            return await self._model_list(gone)
        return self._route(request)

    async def _model_list(self, gone: asyncio.Event) -> Response:
        counts = self.state.model_lists
        counts["asked"] += 1
        if self.state.config.hold_model_list:
            # Held until the config lets go or the caller leaves.
            counts["waiting"] += 1
            waits = [
                asyncio.ensure_future(self.state.model_list_released.wait()),
                asyncio.ensure_future(gone.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                counts["waiting"] -= 1
                for wait in waits:
                    wait.cancel()
            if gone.is_set():
                counts["abandoned"] += 1
                raise ApiError(499, "The caller left before the model list was sent")
        counts["answered"] += 1
        return json_response(model_list(self.state.config.extra_models))

    def _route(self, request: Request) -> Response:
        allowed = False
        for method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                return handler(self.state, request, match.group(1) if match.groups() else "")
            allowed = allowed or bool(match)
        if allowed:
            raise ApiError(405, f"Method {request.method} not allowed on {request.path}")
        raise ApiError(404, f"Unknown path {request.path}", code="not_found")

    def _authenticate(self, request: Request) -> None:
        key = request.api_key()
        if not key:
            raise ApiError(
                401, "Missing API key. Send 'Authorization: Bearer <key>'.", code="invalid_api_key"
            )
        expected = self.state.config.api_key
        if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
            raise ApiError(
                401,
                "Invalid API key provided. You can find your API key at https://api.together.xyz/settings/api-keys.",
                code="invalid_api_key",
            )

    # --- inference pipeline -----------------------------------------------------------
    async def _inference(self, kind: str, request: Request) -> Response:
        """Validate, then faults and limits in Together's order, then the answer."""
        state = self.state
        try:
            body = audio.form(request) if kind in _FORM_KINDS else request.json_object()
            response, tokens = _HANDLERS[kind](state, request, body)
            if not is_known(body["model"], state.config.extra_models):
                raise model_not_available(body["model"])
            self._check_faults_and_limits(kind, request.api_key(), body["model"], response, tokens)
        except ApiError as error:
            response = error.response()
        if state.config.latency_ms:
            await asyncio.sleep(state.config.latency_ms / 1000)
        state.note_status(kind, response.status)
        return response

    def _check_faults_and_limits(
        self, kind: str, key: str, model: str, response: Response, tokens: int
    ) -> None:
        state = self.state
        # Queued faults apply "regardless", before the limiter sees the request.
        injected = state.take_injected_status()
        if injected is not None:
            raise _injected_error(injected, state.config.inject_retry_after_s)
        if state.dedicated(model):
            return  # a dedicated endpoint: no rate limit, no x-ratelimit-* headers
        if state.config.dynamic is not None:
            self._check_dynamic(kind, key, model, response, tokens)
            return
        decision = state.admit(key, kind)
        if not decision.allowed:
            raise _limited(decision)
        # Capacity failures happen at or below the rate, after admission (Together's 503).
        if model in state.config.overloaded_models:
            raise overloaded()
        fault = state.random_fault()
        if fault is not None:
            raise _injected_error(fault, state.config.inject_retry_after_s)
        response.headers.update(_limit_headers(decision, tokens, state.config.tokens_per_second))

    def _check_dynamic(
        self, kind: str, key: str, model: str, response: Response, tokens: int
    ) -> None:
        """Together's dynamic limits instead of the per-kind ones; every answer gets the headers."""
        state = self.state
        decision = state.dynamic_admit(key=key, kind=kind, model=model, tokens=tokens)
        headers = _dynamic_headers(decision, state.config.tokens_per_second, tokens)
        if not decision.allowed:
            raise _dynamic_limited(decision, model, headers)
        # Capacity failures happen at or below the rate, after admission (Together's 503).
        error = None
        if model in state.config.overloaded_models or state.capacity_fault():
            error = overloaded()
        else:
            fault = state.random_fault()
            if fault is not None:
                error = _injected_error(fault, state.config.inject_retry_after_s)
        status = 200 if error is None else error.status
        state.dynamic_settle(key=key, model=model, tokens=tokens, status=status)
        if error is not None:
            error.headers = {**headers, **error.headers}
            raise error
        response.headers.update(headers)

    # --- harness endpoints --------------------------------------------------------
    def _control(self, request: Request) -> Response:
        route = (request.method, request.path)
        if route == ("GET", "/sandbox/stats"):
            return json_response(self.state.stats())
        if route == ("GET", "/sandbox/config"):
            return json_response(self.state.config.to_dict())
        if route == ("POST", "/sandbox/control"):
            try:
                return json_response(self.state.configure(request.json_object()))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ApiError(400, str(exc)) from exc
        if route == ("GET", "/sandbox/image.png"):
            return Response(200, TINY_PNG, content_type="image/png")
        raise ApiError(404, f"Unknown path {request.path}", code="not_found")


def _limit_headers(decision: Decision, tokens: int, tokens_per_second: int) -> dict[str, str]:
    limit = decision.limit if decision.limit is not None else UNLIMITED_REPORTED_RPS
    remaining = decision.remaining if decision.remaining is not None else limit - 1
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": f"{decision.reset:.3f}",
        "x-tokenlimit-limit": str(tokens_per_second),
        "x-tokenlimit-remaining": str(max(0, tokens_per_second - tokens)),
    }


def _limited(decision: Decision) -> ApiError:
    return ApiError(
        429,
        f"You have exceeded the request rate limit of {decision.limit} for this endpoint. "
        f"Retry in {decision.reset:.2f} seconds.",
        error_type="dynamic_request_limited",
        headers={
            "x-ratelimit-limit": str(decision.limit),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": f"{decision.reset:.3f}",
            "retry-after": str(decision.retry_after),
        },
    )


def _dynamic_headers(
    decision: DynamicDecision, tokens_per_second: int, tokens: int
) -> dict[str, str]:
    """All per second, as Together documents its headers: the plain ones are the whole
    requests (tokens) a second enforced now; the -dynamic ones the dynamic rate itself,
    fractional (6 a minute is "0.1"), and what is left of it over the last minute."""
    requests = decision.requests
    headers = {
        "x-ratelimit-limit": str(requests.per_second),
        "x-ratelimit-remaining": str(requests.remaining),
        "x-ratelimit-reset": f"{decision.reset:.3f}",
        "x-ratelimit-limit-dynamic": _per_second(requests.per_minute),
        "x-ratelimit-remaining-dynamic": _per_second(requests.remaining_minute),
    }
    allowance = decision.tokens
    if allowance is None:
        # Token limits off: report the static figure, as outside the dynamic mode.
        headers["x-tokenlimit-limit"] = str(tokens_per_second)
        headers["x-tokenlimit-remaining"] = str(max(0, tokens_per_second - tokens))
        return headers
    return {
        **headers,
        "x-tokenlimit-limit": str(allowance.per_second),
        "x-tokenlimit-remaining": str(allowance.remaining),
        "x-tokenlimit-limit-dynamic": _per_second(allowance.per_minute),
        "x-tokenlimit-remaining-dynamic": _per_second(allowance.remaining_minute),
    }


def _per_second(per_minute: float) -> str:
    return f"{per_minute / 60:.4f}".rstrip("0").rstrip(".") or "0"


def _dynamic_limited(decision: DynamicDecision, model: str, headers: dict[str, str]) -> ApiError:
    if decision.error_type == TOKEN_LIMITED and decision.tokens is not None:
        template, allowance = DYNAMIC_TOKEN_LIMITED_MESSAGE, decision.tokens
    else:
        template, allowance = DYNAMIC_REQUEST_LIMITED_MESSAGE, decision.requests
    message = template.format(
        limit=allowance.per_second, rate=allowance.per_minute, model=model, reset=decision.reset
    )
    return ApiError(
        429,
        message,
        error_type=decision.error_type or REQUEST_LIMITED,
        headers={**headers, "retry-after": str(decision.retry_after)},
    )


def _injected_error(status: int, retry_after_s: float) -> ApiError:
    if status == 429:
        return ApiError(
            429,
            "You have exceeded the dynamic request rate limit (sandbox fault injection).",
            error_type="dynamic_request_limited",
            headers={
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": f"{retry_after_s:.3f}",
                "retry-after": str(max(1, math.ceil(retry_after_s))),
            },
        )
    if status == 503:
        return overloaded()
    error_type, message = _INJECTED_ERRORS.get(
        status, ("server_error", f"Injected status {status}.")
    )
    return ApiError(status, message, error_type=error_type)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop; just acknowledge so servers with lifespan support proceed."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    """Once the body is read, the next ASGI message can only be http.disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
