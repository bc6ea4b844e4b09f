"""Step 4 of a call: answer the caller with what Together said.

A success is passed on as it came (a stream chunk by chunk), with the caller's own
`x-ratelimit-*` headers and the tokens Together reports kept for settling the grant.
A failure becomes the caller's error in OpenAI's shape: Together's 429 as Sluice's
429 (`x-sluice-limited-by: upstream`), an overload as 503, Together refusing Sluice's
own credentials as 502, an unknown model as a 404 naming the closest ones.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx

from limiter.gateway import catalog, errors, metering
from limiter.gateway.admission import Admission, rate_limited
from limiter.gateway.errors import ApiError
from limiter.gateway.forward import OVERLOADED, Forwarded
from limiter.gateway.http import Request, Response, StreamingResponse
from limiter.gateway.metering import Usage
from limiter.protocol.client import spawn
from limiter.upstream import requested_wait


async def answer(
    forwarded: Forwarded, admission: Admission, *, stream: bool, usage: Usage
) -> Response | StreamingResponse:
    """The caller's answer to a successful call. A stream releases the grant itself
    when it ends or the caller goes away (the team API runs `on_close` in every case);
    a buffered answer leaves that to the caller."""
    response = forwarded.response
    content_type = response.headers.get("content-type", "application/json").encode("latin-1")
    # A lease is what is handed back with the tokens used, and usage is recorded (and
    # reported to budgets): read Together's count then.
    counting = bool(admission.grant.lease) or metering.enabled() or admission.budgeted
    result: Response | StreamingResponse
    if stream:
        # A stream may outlast the lease's expiry: it keeps its slot while it runs.
        keeping = spawn(admission.keep_alive())
        chunks = _stream(response, counting, usage)

        async def close() -> None:
            keeping.cancel()
            await chunks.aclose()  # a stream left midway reads its usage now, not when collected
            await response.aclose()
            if counting:
                usage.cut(admission.request.json(), admission.endpoint)
            metering.meter(admission, response.status_code, usage, forwarded.served_by)
            admission.release(usage.tokens if counting else None)

        result = StreamingResponse(
            chunks=chunks,
            status=response.status_code,
            content_type=content_type,
            on_close=close,
        )
    else:
        result = Response(
            status=response.status_code, body=await response.aread(), content_type=content_type
        )
        if counting:
            usage.take(result.body)
            if usage.tokens is None and admission.grant.lease:
                usage.tokens = admission.tokens
    admission.add_quota_headers(result)
    upstream_id = response.headers.get("x-request-id")
    if upstream_id:
        result.add_header("x-upstream-request-id", upstream_id)
    if forwarded.served_by:
        result.add_header("x-sluice-fallback-model", forwarded.served_by)
    return result


async def _stream(response: httpx.Response, counting: bool, usage: Usage) -> AsyncGenerator[bytes]:
    """Pass SSE chunks through as they come; keep the usage from the last chunk that has one,
    and count what was relayed (what a stream cut before that chunk is charged by)."""
    tail = b""
    try:
        async for chunk in response.aiter_raw():
            if counting:
                tail = (tail + chunk)[-4096:]
                usage.relayed(chunk)
            yield chunk
    finally:  # also when the caller went away: the usage chunk may have come already
        if counting:
            for line in reversed(tail.split(b"\n")):
                if line.startswith(b"data: {") and b'"usage"' in line:
                    usage.take(line[6:])
                    break


async def upstream_error(request: Request, forwarded: Forwarded, admission: Admission) -> ApiError:
    """Turn Together's final error answer into the caller's."""
    response = forwarded.response
    outcome = forwarded.outcome
    await response.aread()
    status = response.status_code
    key = request.key
    assert key is not None
    detail = errors.upstream_message(response.content)
    if status == 429:
        # Recorded and reported when it arrived (limiter/gateway/forward.py); here it is
        # answered, with the caller's own quota, as every 429 is (README).
        wait = requested_wait(response.headers) or 1.0
        return rate_limited(
            reason="upstream_rate_limited",
            retry_after=wait,
            limited_by="upstream",
            scope="account",
            message=errors.MSG_UPSTREAM_RATE_LIMITED.format(
                attempts=outcome.attempts, detail=detail
            ),
            quota=admission.quota(),
        )
    if status in OVERLOADED:
        return ApiError(
            503,
            errors.MSG_UPSTREAM_OVERLOADED.format(status=status, attempts=outcome.attempts),
            type=errors.UPSTREAM,
            code="upstream_overloaded",
            headers={"retry-after": "1"},
        )
    if status == 401:
        # Together refused *Sluice's* key: not the caller's fault, and not their key.
        return ApiError(
            502,
            "Together rejected Sluice's upstream credentials; tell the operators.",
            type=errors.UPSTREAM,
            code="upstream_auth_failed",
        )
    model = forwarded.served_by or admission.model
    if status == 404 and model:
        hint = await catalog.closest_models(key, model)
        if hint is not None:
            return ApiError(
                404,
                errors.MSG_MODEL_NOT_FOUND.format(
                    model=model[: errors.MAX_ECHOED_MODEL], hint=hint
                ),
                type=errors.NOT_FOUND,
                code="model_not_found",
                param="model",
            )
    # Anything else (400, 402, 403, 404, 500): Together's own status and message.
    return ApiError(
        status if status < 500 else 502,
        detail,
        type=errors.upstream_type(response.content, status),
        code=errors.upstream_code(response.content),
    )
