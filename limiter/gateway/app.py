"""The team API: Sluice's OpenAI-compatible `/v1/` as a lean ASGI application.

`dashboard/asgi.py` sends every HTTP request under /v1/ (and the together SDK's
/v2/projects/.../models) here, before Django's middleware. This module routes
(`routes.py`), authenticates the key from the headers (`auth.py`), and only then reads
the body (bounded), so a caller without a valid key is never read; it applies the
per-key request rate for kinds whose handlers do not admit themselves, calls the
route's handler (inference: `inference.py`, which reads top-down through
`admission.py`, `sending.py` and `relay.py`; files and jobs: `jobs.py`) and writes
the answer; every failure becomes the OpenAI error shape. A caller that disconnects
cancels its request: a queued ticket is given back and a stream's lease released (see
`exchange.py`). Revoking the key or pausing the team cancels it the same way, and it is
answered what a new call would get (see limiter/gateway/revocation.py).

The team API imports nothing of the process around it: whoever builds it
(limiter/serving.py `build_team_api`) gives it how to reach the limiter client and
where to report refusals, and it hands those to each call (`context.Handles`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence

from django.conf import settings

from limiter import logs
from limiter.gateway import errors, org
from limiter.gateway.admission import admitted
from limiter.gateway.audio import AUDIO_UPLOAD_PATHS
from limiter.gateway.auth import AUTH_FAILURES_PER_MINUTE, Authenticator
from limiter.gateway.context import CallContext, Handles, LimiterStarter
from limiter.gateway.errors import ApiError
from limiter.gateway.exchange import (
    Exchange,
    discard_unread_body,
    error_response,
    read_body,
    send_response,
)
from limiter.gateway.forward import FORWARDED_REQUEST_HEADERS
from limiter.gateway.http import Handler, Request, Response, StreamingResponse
from limiter.gateway.inference import SELF_LIMITED
from limiter.gateway.refusals import recorder
from limiter.gateway.revocation import calls
from limiter.gateway.routes import CHECKED_FIRST, SPENDS_NOTHING, Route, build_routes
from limiter.gateway.sink import RefusalSink
from limiter.gateway.throttle import client_address, trusted_networks
from limiter.models import ORG_KINDS
from limiter.protocol.client import LimiterClient

logger = logging.getLogger(__name__)

__all__ = ["AUTH_FAILURES_PER_MINUTE", "TeamApi", "team_api"]

# Request headers whose values are sent on to Together: each must be encodable there.
UPSTREAM_BOUND_HEADERS = (*FORWARDED_REQUEST_HEADERS, "x-request-id")


def _compile(pattern: str) -> re.Pattern[str]:
    """`{name}` matches one path segment; `{name:path}` the rest of the path."""
    pattern = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")


class TeamApi:
    """The team API. `limiter` is how it reaches its process's limiter client (started
    with the process's background parts on the running loop), given by whoever builds it
    (limiter/serving.py); `refusals` is where every 429 is reported."""

    def __init__(
        self, routes: Sequence[Route], *, limiter: LimiterStarter, refusals: RefusalSink
    ) -> None:
        self.routes = [
            (method, _compile(pattern), kind, handler) for method, pattern, kind, handler in routes
        ]
        self.limiter = limiter
        self.refusals = refusals
        self.auth = Authenticator()
        self.trusted_proxies = trusted_networks(settings.SLUICE_TRUSTED_PROXIES)
        # Requests being handled, queued and streaming ones included: a drain waits for idle.
        self.in_flight = 0
        self.idle = asyncio.Event()
        self._handles: Handles | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.in_flight += 1
        self.idle.clear()
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def _serve(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = _request_id(headers.get("x-request-id"))
        logs.request_id.set(request_id)
        exchange = Exchange(request_id, asyncio.current_task())
        try:
            response = await self._answer(exchange, scope, headers, receive)
        except asyncio.CancelledError:
            if exchange.refusal() is None:
                exchange.untrack()
                return  # the caller went away; nobody to answer
            response = Response()  # cut: answered just below
        response = await exchange.settled(response)
        try:
            await send_response(send, response, request_id)
        except asyncio.CancelledError:
            await exchange.cut_while_sending(send, response)
        finally:
            await exchange.close(response)
        if exchange.watcher is None:  # answered before its body was read
            await discard_unread_body(receive)

    async def _answer(
        self, exchange: Exchange, scope, headers: dict[str, str], receive
    ) -> Response | StreamingResponse:
        """The answer to the request, or to what went wrong. Raises CancelledError when
        the caller goes away (or a revocation cuts the call)."""
        try:
            request = exchange.request = self._start(scope, headers, exchange.request_id)
            kind, handler = self._route(request)
            request.handles = self._handles_of(await self.limiter())
            # The key before the body: a caller without a valid one is answered (401, or
            # the auth-failure throttle's 429) without its body being read or held.
            request.key = await self.auth.authenticate(request)
            request.body = await read_body(receive, _body_limit(request.path))
            # From here on, a disconnect cancels this task (and whatever it waits on).
            exchange.watch(receive)
            return await self._handle(request, kind, handler)
        except ApiError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("team API failed (request id %s)", exchange.request_id)
            return error_response(
                ApiError(
                    500,
                    errors.MSG_INTERNAL.format(request_id=exchange.request_id),
                    type=errors.SERVER,
                    code="internal_error",
                )
            )

    def _handles_of(self, limiter: LimiterClient) -> Handles:
        handles = self._handles
        if handles is None or handles.limiter is not limiter:  # a new loop, a new client
            handles = self._handles = Handles(limiter, self.refusals)
        return handles

    def _start(self, scope, headers: dict[str, str], request_id: str) -> Request:
        """The request from its headers alone: its body is read once the key is known."""
        path = scope["path"]
        limit = _body_limit(path)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, errors.MSG_BODY_TOO_LARGE.format(limit=limit), code="request_too_large"
            )
        _check_forwarded_headers(headers)
        peer = (scope.get("client") or ("", 0))[0] or ""
        return Request(
            method=scope["method"],
            path=path,
            query_string=scope.get("query_string", b""),
            headers=headers,
            body=b"",
            request_id=request_id,
            client=client_address(peer, headers.get("x-forwarded-for"), self.trusted_proxies),
        )

    def _route(self, request: Request) -> tuple[str, Handler]:
        route, allowed = None, []
        for method, pattern, kind, handler in self.routes:
            match = pattern.match(request.path)
            if match:
                if method == request.method:
                    route = (kind, handler)
                    request.path_params = match.groupdict()
                    break
                allowed.append(method)
        if route is None:
            if allowed:
                raise ApiError(
                    405,
                    errors.MSG_METHOD_NOT_ALLOWED.format(method=request.method, path=request.path),
                    code="method_not_allowed",
                    headers={"allow": ", ".join(allowed)},
                )
            raise errors.unknown_route(request.method, request.path)
        return route

    async def _handle(
        self, request: Request, kind: str, handler: Handler
    ) -> Response | StreamingResponse:
        assert request.key is not None  # authenticated in _serve
        # From here on, revoking the key or pausing the team cuts this call.
        task = asyncio.current_task()
        assert task is not None
        request.call = calls.track(request.key, task, request.request_id)
        recorder.key_used(request.key.key_id)
        if kind in ORG_KINDS and kind not in request.key.org_kinds:
            # An organisation-level route this team's profile does not allow: before any quota.
            raise errors.refused_route(
                method=request.method, path=request.path, kind=kind, what=org.what(kind)
            )
        check = CHECKED_FIRST.get(handler)
        if check is not None:
            check(request)  # a bad body is a 400 before it spends any quota
        if kind and kind not in SELF_LIMITED:
            # Files, jobs and the like: the per-key request rate, held only while the call runs.
            assert request.handles is not None
            ctx = CallContext(
                request.key,
                request.request_id,
                kind,
                request.handles,
                spends=handler not in SPENDS_NOTHING,
            )
            async with admitted(ctx) as admission:
                # Admitted: a file or job call runs to its end, so that its answer tells the
                # truth about what it wrote upstream or in the database.
                request.call.cuttable = False
                response = await handler(request)
                admission.add_quota_headers(response)
                return response
        return await handler(request)


def _body_limit(path: str) -> int:
    if path.startswith("/v1/files"):
        return settings.SLUICE_MAX_UPLOAD_BYTES
    if path in AUDIO_UPLOAD_PATHS:
        return settings.SLUICE_MAX_AUDIO_UPLOAD_BYTES
    return settings.SLUICE_MAX_BODY_BYTES


def _request_id(given: str | None) -> str:
    # Keep a caller's id when it is sane, so one id follows the call end to end.
    # ASCII only: str.isalnum() is true of "é" too, and the id is sent upstream.
    if (
        given
        and len(given) <= 64
        and given.isascii()
        and given.replace("-", "").replace("_", "").isalnum()
    ):
        return given
    return "req_" + uuid.uuid4().hex


def _check_forwarded_headers(headers: dict[str, str]) -> None:
    """A 400 for a header Sluice would forward but the upstream client cannot encode.

    Daphne passes latin-1 bytes (0xE9, "é") through; httpx (rightly) refuses to send
    them, which would surface as a 500 after the quota was spent.
    """
    for name in UPSTREAM_BOUND_HEADERS:
        value = headers.get(name)
        if value is not None and not (value.isascii() and value.replace("\t", " ").isprintable()):
            logger.warning("refused: header %s is not printable ASCII", name)
            raise ApiError(
                400, errors.MSG_BAD_HEADER.format(header=name), code="invalid_header", param=name
            )


def team_api(limiter: LimiterStarter, refusals: RefusalSink | None = None) -> TeamApi:
    """The team API with its routes, reaching its process's limiter through `limiter`."""
    return TeamApi(build_routes(), limiter=limiter, refusals=refusals or RefusalSink())
