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
from limiter.gateway.forward import OVERLOADED, UPSTREAM_RATE_LIMITED, Forwarded
from limiter.gateway.http import Response, StreamingResponse
from limiter.gateway.metering import Finish, Usage
from limiter.gateway.sink import UPSTREAM
from limiter.protocol.client import spawn
from limiter.upstream import requested_wait
from limiter.usage.sizing import AUDIO


def _counting(admission: Admission) -> bool:
    # A lease is what is handed back with the tokens used, and usage is recorded (and
    # reported to budgets): read Together's count then. Audio has no tokens to read (its
    # units are known before the call, or read from the answer: limiter/gateway/audio.py).
    if admission.ctx.endpoint in AUDIO:
        return False
    return bool(admission.grant.lease) or metering.enabled() or admission.budgeted


async def buffered(forwarded: Forwarded, finish: Finish) -> Response:
    """The caller's answer to a successful call, read whole; the caller then finishes."""
    response = forwarded.response
    admission, usage = finish.admission, finish.usage
    result = Response(
        status=response.status_code, body=await response.aread(), content_type=_type(response)
    )
    if _counting(admission):
        usage.take(result.body)
        if usage.tokens is None and admission.grant.lease:
            usage.tokens = admission.ctx.size.tokens
    _add_headers(result, forwarded, admission)
    return result


def streamed(forwarded: Forwarded, finish: Finish) -> StreamingResponse:
    """The caller's answer to a successful call, as a stream. The stream finishes the
    call itself when it ends or the caller goes away (the team API runs `on_close` in
    every case)."""
    response = forwarded.response
    admission, usage = finish.admission, finish.usage
    counting = _counting(admission)
    # A stream may outlast the lease's expiry: it keeps its slot while it runs.
    keeping = spawn(admission.keep_alive())
    chunks = _stream(response, counting, usage)

    async def close() -> None:
        keeping.cancel()
        await chunks.aclose()  # a stream left midway reads its usage now, not when collected
        await response.aclose()
        if counting:
            usage.cut(admission.ctx.size)
        finish()

    result = StreamingResponse(
        chunks=chunks, status=response.status_code, content_type=_type(response), on_close=close
    )
    _add_headers(result, forwarded, admission)
    return result


def _type(response: httpx.Response) -> bytes:
    return response.headers.get("content-type", "application/json").encode("latin-1")


def _add_headers(
    result: Response | StreamingResponse, forwarded: Forwarded, admission: Admission
) -> None:
    admission.add_quota_headers(result)
    upstream_id = forwarded.response.headers.get("x-request-id")
    if upstream_id:
        result.add_header("x-upstream-request-id", upstream_id)
    if forwarded.served_by:
        result.add_header("x-sluice-fallback-model", forwarded.served_by)


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


async def upstream_error(forwarded: Forwarded, admission: Admission) -> ApiError:
    """Turn Together's final error answer into the caller's."""
    response = forwarded.response
    await response.aread()
    status = response.status_code
    detail = errors.upstream_message(response.content)
    if status == 429:
        # Reported when it arrived (limiter/gateway/forward.py); here it is answered,
        # with the caller's own quota, as every 429 is (README).
        return rate_limited(
            reason=UPSTREAM_RATE_LIMITED,
            retry_after=requested_wait(response.headers) or 1.0,
            limited_by=UPSTREAM,
            scope="account",
            message=errors.MSG_UPSTREAM_RATE_LIMITED.format(
                attempts=forwarded.outcome.attempts, detail=detail
            ),
            quota=admission.quota(),
        )
    if status in OVERLOADED:
        return ApiError(
            503,
            errors.MSG_UPSTREAM_OVERLOADED.format(
                status=status, attempts=forwarded.outcome.attempts
            ),
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
    if status == 404:
        error = await _model_not_found(forwarded, admission)
        if error is not None:
            return error
    # Anything else (400, 402, 403, 404, 500): Together's own status and message.
    return ApiError(
        status if status < 500 else 502,
        detail,
        type=errors.upstream_type(response.content, status),
        code=errors.upstream_code(response.content),
    )


async def _model_not_found(forwarded: Forwarded, admission: Admission) -> ApiError | None:
    """Together's 404 for the model, with the closest models the caller's team may use."""
    model = forwarded.served_by or admission.ctx.model
    if not model:
        return None
    hint = await catalog.closest_models(admission.ctx.key, model)
    if hint is None:
        return None
    return ApiError(
        404,
        errors.MSG_MODEL_NOT_FOUND.format(model=model[: errors.MAX_ECHOED_MODEL], hint=hint),
        type=errors.NOT_FOUND,
        code="model_not_found",
        param="model",
    )
