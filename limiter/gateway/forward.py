"""Step 3 of a call: one send to Together, and what Together said about pace reported.

`attempt` sends an `UpstreamCall` through the one upstream client (which retries
502/503/504 and transport failures within the deadline). A 429 is not retried there,
because its retry is another call on the account: `rate_limited` reports it to the
refusal sink for each caller of the call (a merged request has many) and to the limiter
(which pauses the account for everyone, at once). Whether to queue again and retry is
decided above, with the grant (limiter/gateway/sending.py). Together's 503s (capacity,
not a limit) are reported too, for the live view's count: they change no pace.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

import httpx

from limiter import metrics
from limiter.gateway import errors
from limiter.gateway.context import CallContext
from limiter.gateway.http import Request
from limiter.gateway.keys import KeyInfo
from limiter.gateway.sink import UPSTREAM
from limiter.protocol.client import spawn
from limiter.upstream import Outcome, UpstreamError, rate_headers
from limiter.upstream import client as upstream

OVERLOADED = frozenset({502, 503, 504})
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "openai-organization")
HEADER_REPORT_INTERVAL = 1.0  # Together's rate headers go to the dashboard at most once a second
UPSTREAM_RATE_LIMITED = "upstream_rate_limited"


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What goes to Together for a call: its body to `path` with `headers`, on the
    account of `ctx.key`. `callers`: whose call it is, each (key, request id), when not
    the context's own (a merged embeddings request's): a 429 is each one's."""

    ctx: CallContext
    path: str
    body: bytes
    headers: dict[str, str]
    stream: bool = False
    callers: tuple[tuple[KeyInfo, str], ...] = ()

    @classmethod
    def of(cls, ctx: CallContext, request: Request, path: str, *, stream: bool) -> UpstreamCall:
        """A caller's request as sent on: its body untouched, the headers Together reads."""
        headers = {
            name: request.headers[name]
            for name in FORWARDED_REQUEST_HEADERS
            if name in request.headers
        }
        headers["x-request-id"] = ctx.request_id
        return cls(ctx, path, request.body, headers, stream)

    def with_model(self, model: str) -> UpstreamCall:
        data = json.loads(self.body)
        data["model"] = model
        return replace(self, body=json.dumps(data).encode())


@dataclass(slots=True)
class Forwarded:
    """Together's final answer to the call, and which model served it."""

    outcome: Outcome
    served_by: str = ""  # the fallback model, when the requested one stayed overloaded

    @property
    def response(self) -> httpx.Response:
        return self.outcome.response


async def attempt(call: UpstreamCall, deadline: float) -> Outcome:
    """One send, with the upstream client's own retries; Together unreachable or too
    slow is the caller's 502 or 504. The caller closes the answer's response."""
    endpoint = call.ctx.endpoint
    try:
        outcome = await upstream.send(
            call.ctx.key.target,
            "POST",
            call.path,
            content=call.body,
            headers=call.headers,
            deadline=deadline,
            stream=call.stream,
            retry_statuses=OVERLOADED,
        )
    except UpstreamError as exc:
        metrics.UPSTREAM_RESPONSES.labels(endpoint, str(exc.status)).inc()
        if exc.timeout:
            raise errors.ApiError(
                504, errors.MSG_UPSTREAM_TIMEOUT, type=errors.UPSTREAM, code="upstream_timeout"
            ) from None
        raise errors.upstream_unreachable() from None
    metrics.UPSTREAM_RESPONSES.labels(endpoint, str(outcome.response.status_code)).inc()
    return outcome


async def rate_limited(call: UpstreamCall, response: httpx.Response, pause: float) -> None:
    """Together said 429: keep it for the auditors (whether or not a retry then works),
    for each caller under its own team, key and request id; and pause the account for
    everyone now, before a retry asks again."""
    ctx = call.ctx
    await response.aread()
    message = errors.upstream_message(response.content)
    for key, request_id in call.callers or ((ctx.key, ctx.request_id),):
        ctx.refusals.refused(
            key,
            request_id,
            ctx.endpoint,
            ctx.model,
            reason=UPSTREAM_RATE_LIMITED,
            source=UPSTREAM,
            retry_after=pause,
            message=message,
        )
    await reporter.rate_limited(
        ctx,
        response.headers,
        pause=pause,
        error_type=errors.upstream_type(response.content, 429),
    )


class _Reporter:
    """Tells the limiter what Together said about a model: its rate headers at most once
    a second per account, endpoint and model, and every 429 at once."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], float] = {}

    def headers(self, ctx: CallContext, model: str, headers: httpx.Headers) -> None:
        now = time.monotonic()
        seen = (ctx.key.account_id, ctx.endpoint, model)
        if now - self._last.get(seen, 0.0) < HEADER_REPORT_INTERVAL:
            return
        self._last[seen] = now
        found = rate_headers(headers)
        if found:
            spawn(self._report(ctx, model, pause=0.0, headers=found, refused=False))

    def unavailable(self, ctx: CallContext, count: int) -> None:
        """Together answered 503 `count` times (capacity): every one is counted."""
        spawn(self._report(ctx, ctx.model, pause=0.0, headers={}, refused=False, unavailable=count))

    async def rate_limited(
        self, ctx: CallContext, headers: httpx.Headers, pause: float, error_type: str
    ) -> None:
        # Awaited, not spawned: the pause must reach the limiter before our own retry asks.
        self._last[(ctx.key.account_id, ctx.endpoint, ctx.model)] = time.monotonic()
        await self._report(
            ctx,
            ctx.model,
            pause=pause,
            headers=rate_headers(headers),
            refused=True,
            error_type=error_type,
        )

    @staticmethod
    async def _report(
        ctx: CallContext,
        model: str,
        *,
        pause: float,
        headers: dict[str, str],
        refused: bool,
        error_type: str = "",
        unavailable: int = 0,
    ) -> None:
        await ctx.limiter.report_upstream(
            key=ctx.key,
            endpoint=ctx.endpoint,
            model=model,
            pause=pause,
            headers=headers,
            refused=refused,
            error_type=error_type,
            unavailable=unavailable,
        )


reporter = _Reporter()
