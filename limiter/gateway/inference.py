"""Inference routes: admit through the limiter, forward to Together, answer honestly.

Every inference call follows one path (`_proxy`):
  1. parse just enough of the body (model, stream, sizes) — the body itself is
     forwarded untouched, Together's extra parameters included;
  2. ask the limiter (waiting in the fair queue if need be) or answer 429;
  3. send upstream through `limiter.upstream` (retries, upstream-429 pause);
  4. on a model that stays overloaded, try the profile's fallback model;
  5. answer: the upstream body, the caller's own x-ratelimit-* headers, and the lease
     released with the tokens actually used (a stream releases when it ends or the
     caller goes away).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from django.conf import settings

from limiter import metrics, runtime
from limiter.gateway import errors, revocation
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Request, Response, StreamingResponse
from limiter.jobs.ownership import owned_models, usable
from limiter.keys import KeyInfo
from limiter.recorder import recorder
from limiter.upstream import (
    Outcome,
    Target,
    UpstreamError,
    rate_headers,
    requested_wait,
    resolve_target,
)
from limiter.upstream import client as upstream

logger = logging.getLogger(__name__)

# Endpoint kinds whose handlers take their own lease (the team API must not wrap them).
SELF_LIMITED = frozenset({"chat", "completions", "embeddings", "images", "rerank"})
OVERLOADED = frozenset({502, 503, 504})
DEFAULT_COMPLETION_TOKENS = 256  # reserved when a call sets no max_tokens (and a TPM limit applies)
MODELS_TTL = 300.0
HEADER_REPORT_INTERVAL = 1.0  # Together's rate headers go to the dashboard at most once a second
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "openai-organization")


def target_for(key: KeyInfo) -> Target:
    return resolve_target(
        account_id=key.account_id, account_name=key.account_name,
        base_url=key.base_url, api_key_setting=key.api_key_setting,
    )


# --- the limiter hop ---------------------------------------------------------------------
def _format_reset(seconds: float) -> str:
    # OpenAI's format: "1s", "6m0s", "250ms".
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"


def quota_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": _format_reset(reset),
    }


def add_quota_headers(response: Response | StreamingResponse, grant: runtime.Grant) -> None:
    for name, value in quota_headers(grant.limit, grant.remaining, grant.reset).items():
        response.add_header(name, value)
    if grant.waited:
        response.add_header("x-sluice-queued-ms", str(round(grant.waited * 1000)))


def rate_limited(
    *, reason: str, retry_after: float, message: str, limited_by: str, scope: str = "",
    quota: dict[str, str] | None = None,
) -> ApiError:
    """A 429 in the contract's shape: Retry-After rounded up, retry-after-ms, and who refused."""
    retry_after = max(retry_after, 0.001)
    headers = {
        "retry-after": str(math.ceil(retry_after)),
        "retry-after-ms": str(math.ceil(retry_after * 1000)),
        "x-sluice-limited-by": limited_by,
        **(quota or {}),
    }
    extra = {"retry_after": round(retry_after, 3), "limited_by": limited_by, "scope": scope or None}
    return ApiError(429, message, type=errors.RATE_LIMIT, code=reason, headers=headers, extra=extra)


REFUSAL_MESSAGES = {
    "rate_limited": "Rate limit reached for this key on {endpoint}: {limit} requests/min. Retry after {retry:.2f}s.",
    "account_rate_limited": "The shared Together account is at its limit on {endpoint}. Retry after {retry:.2f}s.",
    "token_rate_limited": "Token rate limit reached on {endpoint}. Retry after {retry:.2f}s.",
    "queue_full": "Too many requests of this key are already queued on {endpoint}. Retry after {retry:.2f}s.",
    "queue_timeout": "The request waited the longest this key may queue on {endpoint} and was not admitted. Retry after {retry:.2f}s.",
    "concurrency_limited": "Too many concurrent requests on {endpoint}. Retry after {retry:.2f}s.",
    "upstream_paused": "Together asked Sluice to slow down on {endpoint}; calls are paused. Retry after {retry:.2f}s.",
}


async def admit(request: Request, endpoint: str, tokens: float, model: str = "") -> runtime.Grant:
    """Wait for the limiter's grant, then check the key may still call, right before the
    call goes upstream: a revocation's broadcast cuts calls in flight (limiter/gateway/
    revocation.py), and this catches one that slipped past it (the broadcast cleared the
    key cache, so this asks the database)."""
    grant = await _grant(request, endpoint, tokens, model)
    assert request.key is not None
    refusal = await revocation.key_refusal(request.key)
    if refusal is not None:
        runtime.release(grant.lease, None)
        raise refusal
    return grant


async def _grant(request: Request, endpoint: str, tokens: float, model: str) -> runtime.Grant:
    """Wait for the limiter's grant; refuse with a 429 (recorded) or a 503 (limiter down)."""
    key = request.key
    assert key is not None
    limiter = await runtime.ensure_started()
    started = time.monotonic()
    try:
        grant = await limiter.acquire(key=key, endpoint=endpoint, tokens=tokens, request_id=request.request_id)
    except runtime.Refused as refused:
        d = refused.decision
        metrics.LIMITER_UP.set(1)
        metrics.REFUSED.labels(endpoint, d["reason"], "gateway").inc()
        recorder.refusal(
            team_id=key.team_id, team_name=key.team_name, key_prefix=key.prefix, upstream=key.account_name,
            endpoint=endpoint, model=model, reason=d["reason"], source="gateway",
            retry_after=d["retry_after"], request_id=request.request_id,
        )
        message = REFUSAL_MESSAGES.get(d["reason"], "Rate limited on {endpoint}. Retry after {retry:.2f}s.")
        raise rate_limited(
            reason=d["reason"], retry_after=d["retry_after"], limited_by="gateway", scope=d["scope"],
            message=message.format(endpoint=endpoint, limit=d["limit"], retry=d["retry_after"]),
            quota=quota_headers(d["limit"], d["remaining"], d["reset"]),
        ) from None
    except runtime.LimiterUnavailable:
        metrics.LIMITER_UP.set(0)
        metrics.LIMITER_UNAVAILABLE.inc()
        if settings.SLUICE_LIMITER_FAILURE_MODE == "closed":
            raise ApiError(503, errors.MSG_LIMITER_DOWN, type=errors.SERVER, code="limiter_unavailable",
                           headers={"retry-after": "1"}) from None
        logger.error("limiter unavailable: admitting %s without a limit (failure mode 'open')", request.request_id)
        return runtime.Grant("", 0.0, 0, 0, 0.0)
    metrics.LIMITER_UP.set(1)
    metrics.ADMITTED.labels(endpoint).inc()
    if grant.waited:
        metrics.QUEUED.labels(endpoint).inc()
        metrics.QUEUE_WAIT.labels(endpoint).observe(grant.waited)
    else:
        metrics.LIMITER_ROUND_TRIP.observe(time.monotonic() - started)
    return grant


@asynccontextmanager
async def admitted(request: Request, endpoint: str, tokens: float = 0.0) -> AsyncIterator[runtime.Grant]:
    """A grant held for the block and released (shielded from cancellation) after it."""
    grant = await admit(request, endpoint, tokens)
    try:
        yield grant
    finally:
        runtime.release(grant.lease, None)


# --- sizes -----------------------------------------------------------------------------------
def _text_size(value: Any) -> int:
    """Characters of text anywhere in `value`. A loop, not recursion: a caller's body
    decides how deep it goes (Request.json bounds it too)."""
    size, stack = 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            size += len(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    return size


def estimate_tokens(body: dict[str, Any], endpoint: str) -> float:
    """Prompt size (about 4 characters a token) plus the completion it may produce."""
    prompt = _text_size(body.get("messages") or body.get("prompt") or body.get("input") or body.get("documents"))
    completion = 0
    if endpoint in ("chat", "completions"):
        completion = body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_COMPLETION_TOKENS
        if not isinstance(completion, int) or completion < 0:
            completion = DEFAULT_COMPLETION_TOKENS
    return math.ceil(prompt / 4) + completion


def _uses_tokens(key: KeyInfo, endpoint: str) -> bool:
    limits = (key.key_limits.get(endpoint), key.account_limits.get(endpoint))
    return any(limit and limit[2] for limit in limits)


def _usage_tokens(data: bytes) -> float | None:
    try:
        usage = json.loads(data).get("usage") or {}
        return float(usage["total_tokens"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# --- the upstream hop ---------------------------------------------------------------------------
class _Reporter:
    """Tells the limiter what Together said: its rate headers (for the dashboard) at most
    once a second per account and endpoint, and every 429 at once."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def headers(self, key: KeyInfo, endpoint: str, headers) -> None:
        now = time.monotonic()
        if now - self._last.get((key.account_id, endpoint), 0.0) < HEADER_REPORT_INTERVAL:
            return
        self._last[(key.account_id, endpoint)] = now
        found = rate_headers(headers)
        if found:
            runtime.spawn(runtime.report_upstream(key=key, endpoint=endpoint, pause=0.0, headers=found))

    async def rate_limited(self, key: KeyInfo, endpoint: str, headers, pause: float) -> None:
        # Awaited, not spawned: the pause must reach the limiter before our own retry asks.
        self._last[(key.account_id, endpoint)] = time.monotonic()
        await runtime.report_upstream(key=key, endpoint=endpoint, pause=pause, headers=rate_headers(headers),
                                      refused=True)


report = _Reporter()


async def _send_upstream(request: Request, endpoint: str, path: str, body: bytes, stream: bool,
                         lease: _Lease) -> Outcome:
    key = request.key
    assert key is not None

    async def rate_limited_upstream(seconds: float, response, retrying: bool) -> bool:
        # Together said 429: pause this account for everyone, now, not at the next check,
        # and keep the refusal for the auditors, whether or not a retry then succeeds.
        await response.aread()
        recorder.refusal(
            team_id=key.team_id, team_name=key.team_name, key_prefix=key.prefix, upstream=key.account_name,
            endpoint=endpoint, model=str(request.json().get("model", "")), reason="upstream_rate_limited",
            source="upstream", retry_after=seconds, request_id=request.request_id,
            message=_upstream_message(response.content),
        )
        metrics.REFUSED.labels(endpoint, "upstream_rate_limited", "upstream").inc()
        await report.rate_limited(key, endpoint, response.headers, pause=seconds)
        if not retrying:
            return False
        # The retry is another call on the account: it queues behind the pause with
        # everyone else instead of firing the moment the pause ends.
        lease.swap(await admit(request, endpoint, lease.tokens))
        return True

    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    headers["x-request-id"] = request.request_id
    started = time.monotonic()
    try:
        outcome = await upstream.send(
            target_for(key), "POST", path, content=body, headers=headers,
            deadline=started + settings.SLUICE_UPSTREAM_DEADLINE,
            stream=stream, on_rate_limited=rate_limited_upstream,
        )
        metrics.UPSTREAM_SECONDS.labels(endpoint).observe(time.monotonic() - started)
        metrics.UPSTREAM_RESPONSES.labels(endpoint, str(outcome.response.status_code)).inc()
        return outcome
    except UpstreamError as exc:
        metrics.UPSTREAM_RESPONSES.labels(endpoint, str(exc.status)).inc()
        if exc.timeout:
            raise ApiError(504, errors.MSG_UPSTREAM_TIMEOUT, type=errors.UPSTREAM, code="upstream_timeout") from None
        raise errors.upstream_unreachable() from None


class _Lease:
    """The grant a call holds; a retry after an upstream 429 swaps it for a new one."""

    __slots__ = ("grant", "tokens")

    def __init__(self, grant: runtime.Grant, tokens: float) -> None:
        self.grant, self.tokens = grant, tokens

    def swap(self, grant: runtime.Grant) -> None:
        runtime.release(self.grant.lease, None)
        self.grant = grant

    def release(self, tokens_used: float | None) -> None:
        runtime.release(self.grant.lease, tokens_used)


def _with_model(body: bytes, model: str) -> bytes:
    data = json.loads(body)
    data["model"] = model
    return json.dumps(data).encode()


async def _upstream_error(request: Request, endpoint: str, model: str, outcome: Outcome,
                          grant: runtime.Grant) -> ApiError:
    """Turn a final upstream error into the caller's answer (`grant`: the one the call holds)."""
    response = outcome.response
    await response.aread()
    status = response.status_code
    key = request.key
    assert key is not None
    detail = _upstream_message(response.content)
    if status == 429:
        # Recorded and reported when it arrived (see _send_upstream); here it is answered.
        wait = requested_wait(response.headers) or 1.0
        # Every 429 carries the caller's own quota, Together's included (README).
        return rate_limited(
            reason="upstream_rate_limited", retry_after=wait, limited_by="upstream", scope="account",
            message=errors.MSG_UPSTREAM_RATE_LIMITED.format(attempts=outcome.attempts, detail=detail),
            quota=quota_headers(grant.limit, grant.remaining, grant.reset),
        )
    if status in OVERLOADED:
        return ApiError(503, errors.MSG_UPSTREAM_OVERLOADED.format(status=status, attempts=outcome.attempts),
                        type=errors.UPSTREAM, code="upstream_overloaded", headers={"retry-after": "1"})
    if status == 401:
        # Together refused *Sluice's* key: not the caller's fault, and not their key.
        return ApiError(502, "Together rejected Sluice's upstream credentials; tell the operators.",
                        type=errors.UPSTREAM, code="upstream_auth_failed")
    if status == 404 and model:
        hint = await _closest_models(key, model)
        if hint is not None:
            return ApiError(404, errors.MSG_MODEL_NOT_FOUND.format(model=model[:errors.MAX_ECHOED_MODEL], hint=hint),
                            type=errors.NOT_FOUND,
                            code="model_not_found", param="model")
    # Anything else (400, 402, 403, 404, 500): Together's own status and message.
    return ApiError(status if status < 500 else 502, detail, type=_upstream_type(response.content, status),
                    code=_upstream_code(response.content))


def _upstream_json(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else ({"message": error} if isinstance(error, str) else {})


def _upstream_message(content: bytes) -> str:
    return str(_upstream_json(content).get("message") or content[:300].decode(errors="replace") or "no detail")


def _upstream_type(content: bytes, status: int) -> str:
    return str(_upstream_json(content).get("type") or (errors.INVALID_REQUEST if status < 500 else errors.UPSTREAM))


def _upstream_code(content: bytes) -> str | None:
    code = _upstream_json(content).get("code")
    return str(code) if code is not None else None


def _model_field(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, errors.MSG_FIELD_REQUIRED.format(field="model"), code="missing_field", param="model")
    if len(model) > errors.MAX_ECHOED_MODEL:
        # No model id is this long; refused here, it is never sent on, echoed or fuzzy-matched.
        raise ApiError(400, errors.MSG_MODEL_TOO_LONG.format(limit=errors.MAX_ECHOED_MODEL), code="invalid_value",
                       param="model")
    return model


def _stream_field(body: dict[str, Any]) -> bool:
    # Only a boolean: "yes" used to get a buffered answer the caller then parsed as a stream.
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, errors.MSG_FIELD_NOT_BOOLEAN.format(field="stream"), code="invalid_type", param="stream")
    return stream is True


async def _proxy(request: Request, endpoint: str, path: str) -> Response | StreamingResponse:
    key = request.key
    assert key is not None
    body = request.json()
    model = _model_field(body)
    if not await owned_models.usable(team_id=key.team_id, name=model):
        # Another team's fine-tuned model: Together would serve it (one account), so
        # Sluice answers as if it did not exist, before the limiter or Together hear of it.
        raise await model_not_found(key, model)
    stream = _stream_field(body)
    counting = _uses_tokens(key, endpoint)
    tokens = estimate_tokens(body, endpoint) if counting else 0.0
    lease = _Lease(await admit(request, endpoint, tokens, model), tokens)
    used = _Usage()
    streaming = False
    try:
        outcome = await _send_upstream(request, endpoint, path, request.body, stream, lease)
        served_by = ""
        fallback = key.fallbacks.get(model)
        if outcome.response.status_code in OVERLOADED and fallback:
            await outcome.response.aclose()
            logger.warning("%s stayed overloaded; serving %s with fallback %s", model, request.request_id, fallback)
            outcome = await _send_upstream(request, endpoint, path, _with_model(request.body, fallback), stream, lease)
            served_by = fallback
        response = outcome.response
        report.headers(key, endpoint, response.headers)
        if response.status_code >= 400:
            raise await _upstream_error(request, endpoint, served_by or model, outcome, lease.grant)
        content_type = response.headers.get("content-type", "application/json").encode("latin-1")
        answer: Response | StreamingResponse
        if stream:
            # The stream outlives this call: it releases the lease when it ends or the
            # caller goes away (the team API runs on_close in every case).
            async def close() -> None:
                await response.aclose()
                lease.release(used.tokens if counting else None)

            answer = StreamingResponse(chunks=_relay(response, counting, used), status=response.status_code,
                                       content_type=content_type, on_close=close)
            streaming = True
        else:
            answer = Response(status=response.status_code, body=await response.aread(), content_type=content_type)
            if counting:
                used.tokens = _usage_tokens(answer.body) or tokens
        add_quota_headers(answer, lease.grant)
        _decorate(answer, response, served_by)
        return answer
    finally:
        if not streaming:
            lease.release(used.tokens)


class _Usage:
    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens: float | None = None


async def _relay(response, counting: bool, used: _Usage) -> AsyncIterator[bytes]:
    """Pass SSE chunks through as they come; keep the usage from the last chunk that has one."""
    tail = b""
    async for chunk in response.aiter_raw():
        if counting:
            tail = (tail + chunk)[-4096:]
        yield chunk
    if counting:
        for line in reversed(tail.split(b"\n")):
            if line.startswith(b"data: {") and b'"usage"' in line:
                used.tokens = _usage_tokens(line[6:])
                break


def _decorate(answer: Response | StreamingResponse, upstream_response, served_by: str) -> None:
    upstream_id = upstream_response.headers.get("x-request-id")
    if upstream_id:
        answer.add_header("x-upstream-request-id", upstream_id)
    if served_by:
        answer.add_header("x-sluice-fallback-model", served_by)


# --- models ---------------------------------------------------------------------------------
_models: dict[str, tuple[float, list[dict[str, Any]]]] = {}


async def model_list(key: KeyInfo) -> list[dict[str, Any]]:
    """Together's model list for the key's account, cached for a few minutes."""
    cached = _models.get(key.account_id)
    if cached and time.monotonic() - cached[0] < MODELS_TTL:
        return cached[1]
    try:
        outcome = await upstream.send(target_for(key), "GET", "/models", deadline=time.monotonic() + 15)
    except UpstreamError:
        raise errors.upstream_unreachable() from None
    if outcome.response.status_code != 200:
        raise await _upstream_error_plain(outcome)
    data = outcome.response.json()
    # Together answers a bare array; OpenAI's shape wraps it.
    rows = data if isinstance(data, list) else data.get("data", [])
    _models[key.account_id] = (time.monotonic(), rows)
    return rows


async def _upstream_error_plain(outcome: Outcome) -> ApiError:
    content = outcome.response.content
    return ApiError(502, _upstream_message(content), type=errors.UPSTREAM, code="upstream_error")


async def _visible_rows(key: KeyInfo, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Together's model rows without other teams' fine-tuned models (one account lists all)."""
    owners = await owned_models.owners()
    return [row for row in rows if isinstance(row, dict)
            and usable(owners, team_id=key.team_id, name=str(row.get("id", "")))]


async def _closest_models(key: KeyInfo, model: str) -> str | None:
    """A hint naming the closest models this key may use, or None if the model does exist."""
    try:
        ids = [row.get("id", "") for row in await _visible_rows(key, await model_list(key))]
    except ApiError:
        return ""
    if model in ids:
        return None
    close = difflib.get_close_matches(model, ids, n=3, cutoff=0.3)
    if not close:  # match on the part after the organisation, e.g. "llama-3.3-70b"
        lowered = {i.split("/")[-1].lower(): i for i in ids}
        close = [lowered[m] for m in difflib.get_close_matches(model.split("/")[-1].lower(), lowered, n=3, cutoff=0.3)]
    return f" Closest models: {', '.join(close)}." if close else " See GET /v1/models."


async def model_not_found(key: KeyInfo, model: str, *, param: str = "model") -> ApiError:
    """The 404 for a model this key may not use: word for word the one for a model
    Together does not know, so it does not tell that the model exists."""
    hint = await _closest_models(key, model)
    return ApiError(404, errors.MSG_MODEL_NOT_FOUND.format(model=model, hint=hint or " See GET /v1/models."),
                    type=errors.NOT_FOUND, code="model_not_found", param=param)


async def models(request: Request) -> Response:
    assert request.key is not None
    rows = await _visible_rows(request.key, await model_list(request.key))
    data = [
        {**row, "object": "model", "id": row.get("id", ""), "created": row.get("created", 0),
         "owned_by": row.get("organization") or row.get("owned_by") or "together"}
        for row in rows
    ]
    return Response.json({"object": "list", "data": data})


# --- routes ----------------------------------------------------------------------------------
async def chat_completions(request: Request) -> Response | StreamingResponse:
    return await _proxy(request, "chat", "/chat/completions")


async def completions(request: Request) -> Response | StreamingResponse:
    return await _proxy(request, "completions", "/completions")


async def embeddings(request: Request) -> Response | StreamingResponse:
    return await _proxy(request, "embeddings", "/embeddings")


async def images(request: Request) -> Response | StreamingResponse:
    return await _proxy(request, "images", "/images/generations")


async def rerank(request: Request) -> Response | StreamingResponse:
    return await _proxy(request, "rerank", "/rerank")
