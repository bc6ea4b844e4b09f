"""Step 2 of a call: admission. Ask the limiter, wait in its fair queue, or refuse.

`admit` answers with an `Admission`: the grant the call holds until it is answered.
A refusal is a 429 in the contract's shape (recorded for the auditors); a limiter that
does not answer is a 503 (or, in failure mode "open", a grant without a limit).

Right after the grant, the key is checked once more: a revocation's broadcast cuts
calls in flight (limiter/gateway/revocation.py), and this catches one that slipped
past it (the broadcast cleared the key cache, so the check asks the database).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from django.conf import settings

from limiter import metrics, serving
from limiter.alerts.monitor import monitor
from limiter.authority.engine import INVALID_UNITS
from limiter.gateway import errors, revocation
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Request, Response, StreamingResponse
from limiter.gateway.keys import KeyInfo
from limiter.gateway.refusals import recorder
from limiter.protocol import events
from limiter.protocol.client import Grant, LimiterUnavailable, Patience, Refused
from limiter.usage.prices import NO_PRICE, cost_of, prices

logger = logging.getLogger(__name__)

DEFAULT_COMPLETION_TOKENS = 256  # reserved when a call sets no max_tokens (and a TPM limit applies)

REFUSAL_MESSAGES = {
    "rate_limited": (
        "Rate limit reached for this key on {endpoint}: {limit} requests/min. "
        "Retry after {retry:.2f}s."
    ),
    "account_rate_limited": (
        "The shared Together account is at its limit on {endpoint}. Retry after {retry:.2f}s."
    ),
    "token_rate_limited": "Token rate limit reached on {endpoint}. Retry after {retry:.2f}s.",
    "queue_full": (
        "Too many requests of this key are already queued on {endpoint}. Retry after {retry:.2f}s."
    ),
    "queue_timeout": (
        "The request waited the longest this key may queue on {endpoint} and was not admitted. "
        "Retry after {retry:.2f}s."
    ),
    "concurrency_limited": "Too many concurrent requests on {endpoint}. Retry after {retry:.2f}s.",
    "upstream_paused": (
        "Together asked Sluice to slow down on {endpoint}; calls are paused. "
        "Retry after {retry:.2f}s."
    ),
}
MSG_RATE_LIMITED = "Rate limited on {endpoint}. Retry after {retry:.2f}s."
MSG_ESTIMATE_OUT_OF_RANGE = "The request's token or cost estimate is out of range."


class Admission:
    """The grant a call holds, released exactly once (shielded from cancellation)."""

    __slots__ = (
        "request",
        "endpoint",
        "tokens",
        "model",
        "grant",
        "budgeted",
        "charge",
        "requeue_wait",
        "reservation",
    )

    def __init__(
        self,
        request: Request,
        endpoint: str,
        tokens: float,
        model: str,
        grant: Grant,
        charge: str = events.CHARGE_BOTH,
    ) -> None:
        self.request, self.endpoint, self.tokens, self.model, self.grant = (
            request,
            endpoint,
            tokens,
            model,
            grant,
        )
        # A budget counts this call: its usage goes to the limiter when it ends, settling
        # the reservation its grant holds (metering.meter takes it; `release` settles
        # one never metered at 0: the call never reached Together).
        self.budgeted = grant.budgeted
        self.reservation = grant.reservation
        self.charge = charge  # events.CHARGE_*: a merged embeddings call charges apart
        # A merged request queues again (after Together's 429) this long at most, its
        # callers' longest max wait; None: its key's (every other call).
        self.requeue_wait: float | None = None

    def release(self, tokens_used: float | None = None, *, unused: bool = False) -> None:
        """Hand the grant back; `tokens_used` settles a token reservation. `unused`: the
        work never went upstream, so the request charge comes back too (a merged
        embeddings caller refused at the account is charged nothing, as a call alone)."""
        grant, self.grant = self.grant, Grant("", 0.0, 0, 0, 0.0)
        serving.release(grant.lease, tokens_used, unused=unused)
        reservation, self.reservation = self.reservation, ""
        serving.unreserve(reservation)

    async def requeue(self) -> None:
        """Queue again for a retry after Together's 429, handing the grant back in the
        same step (events.REACQUIRE): every call in flight gets the same 429, and a retry
        that kept its slot while queueing for another would wait on itself under a
        concurrency cap; one that let go first could lose the slot to a newcomer."""
        held, self.grant = self.grant, Grant("", 0.0, 0, 0, 0.0)
        patience = None
        if self.requeue_wait is not None:
            patience = Patience(time.monotonic() + self.requeue_wait)
        self.grant = await _grant_checked(
            self.request,
            self.endpoint,
            self.tokens,
            self.model,
            replacing=held.lease,
            charge=self.charge,
            patience=patience,
        )
        self.budgeted = self.budgeted or self.grant.budgeted
        # The call's reservation is its first grant's (a REACQUIRE reserves nothing new).
        self.reservation = self.reservation or self.grant.reservation

    async def keep_alive(self) -> None:
        """Renew the grant's lease while the call runs (a stream may outlast
        SLUICE_LEASE_TTL; the expiry is for processes that died). Cancelled at the end."""
        if not self.grant.lease:
            return
        limiter = await serving.ensure_started()
        while True:
            await asyncio.sleep(settings.SLUICE_LEASE_TTL / 3)
            limiter.renew(self.grant.lease)

    def add_quota_headers(self, response: Response | StreamingResponse) -> None:
        for name, value in self.quota().items():
            response.add_header(name, value)
        if self.grant.waited:
            response.add_header("x-sluice-queued-ms", str(round(self.grant.waited * 1000)))

    def quota(self) -> dict[str, str]:
        return quota_headers(self.grant.limit, self.grant.remaining, self.grant.reset)


async def admit(
    request: Request,
    endpoint: str,
    tokens: float = 0.0,
    model: str = "",
    *,
    charge: str = events.CHARGE_BOTH,
    patience: Patience | None = None,
) -> Admission:
    """Wait for the limiter's grant for this call, or raise the caller's 429 / 503.
    `charge`: the scopes charged (events.CHARGE_*); a merged request charges apart, and
    queues as long as its `patience` (its callers') allows."""
    grant = await _grant_checked(request, endpoint, tokens, model, charge=charge, patience=patience)
    return Admission(request, endpoint, tokens, model, grant, charge)


@asynccontextmanager
async def admitted(request: Request, endpoint: str) -> AsyncIterator[Admission]:
    """A grant held for the block (files, jobs: the per-key request rate)."""
    admission = await admit(request, endpoint)
    try:
        yield admission
    finally:
        admission.release()


async def _grant_checked(
    request: Request,
    endpoint: str,
    tokens: float,
    model: str,
    *,
    replacing: str = "",
    charge: str = events.CHARGE_BOTH,
    patience: Patience | None = None,
) -> Grant:
    grant = await _grant(request, endpoint, tokens, model, replacing, charge, patience)
    if charge == events.CHARGE_ACCOUNT:
        return grant  # a merged request: each of its callers' keys was checked at its own grant
    assert request.key is not None
    refusal = await revocation.key_refusal(request.key)
    if refusal is not None:
        serving.release(grant.lease, None)
        serving.unreserve(grant.reservation)
        raise refusal
    return grant


async def _grant(
    request: Request,
    endpoint: str,
    tokens: float,
    model: str,
    replacing: str = "",
    charge: str = events.CHARGE_BOTH,
    patience: Patience | None = None,
) -> Grant:
    key = request.key
    assert key is not None
    limiter = await serving.ensure_started()
    started = time.monotonic()
    # A merged request's body is built later, and its callers' own tickets hold its cost.
    cost = (
        estimate_cost(request, endpoint, model)
        if model and charge != events.CHARGE_ACCOUNT
        else 0.0
    )
    try:
        grant = await limiter.acquire(
            key=key,
            endpoint=endpoint,
            tokens=tokens,
            request_id=request.request_id,
            model=model,
            replacing=replacing,
            charge=charge,
            patience=patience,
            cost=cost,
        )
    except Refused as refused:
        d = refused.decision
        metrics.LIMITER_UP.set(1)
        if d["reason"] == INVALID_UNITS:
            # Not a rate limit: an estimate the edge should have bounded (a bug, logged).
            logger.error("limiter refused %s: its estimate is out of range", request.request_id)
            raise ApiError(400, MSG_ESTIMATE_OUT_OF_RANGE, code=INVALID_UNITS) from None
        if charge != events.CHARGE_ACCOUNT:  # a merged request's: recorded for each caller
            record_refusal(
                key,
                request.request_id,
                endpoint,
                model,
                reason=d["reason"],
                retry_after=d["retry_after"],
                message=d.get("message", ""),
            )
        message = REFUSAL_MESSAGES.get(d["reason"], MSG_RATE_LIMITED)
        raise rate_limited(
            reason=d["reason"],
            retry_after=d["retry_after"],
            limited_by="gateway",
            scope=d["scope"],
            # The limiter words a budget refusal itself: only it knows the budget.
            message=d.get("message")
            or message.format(endpoint=endpoint, limit=d["limit"], retry=d["retry_after"]),
            quota=quota_headers(d["limit"], d["remaining"], d["reset"]),
        ) from None
    except LimiterUnavailable:
        limiter_silent(request.request_id)
        return Grant("", 0.0, 0, 0, 0.0)
    metrics.LIMITER_UP.set(1)
    metrics.ADMITTED.labels(endpoint).inc()
    if grant.waited:
        metrics.QUEUED.labels(endpoint).inc()
        metrics.QUEUE_WAIT.labels(endpoint).observe(grant.waited)
    else:
        metrics.LIMITER_ROUND_TRIP.observe(time.monotonic() - started)
    return grant


def record_refusal(
    key: KeyInfo,
    request_id: str,
    endpoint: str,
    model: str,
    *,
    reason: str,
    retry_after: float,
    message: str = "",
) -> None:
    """A 429 from Sluice, for the auditors, the alerts and /metrics."""
    metrics.REFUSED.labels(endpoint, reason, "gateway").inc()
    monitor.team_refused(key.team_id)
    recorder.refusal(
        team_id=key.team_id,
        team_name=key.team_name,
        key_prefix=key.prefix,
        upstream=key.account_name,
        endpoint=endpoint,
        model=model,
        reason=reason,
        source="gateway",
        retry_after=retry_after,
        request_id=request_id,
        message=message,
    )


# --- the 429 and the quota headers ------------------------------------------------------
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


def rate_limited(
    *,
    reason: str,
    retry_after: float,
    message: str,
    limited_by: str,
    scope: str = "",
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


# --- what a call costs ----------------------------------------------------------------------
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


def limiter_silent(request_id: str) -> None:
    """The limiter did not answer: count it, raise its alert, and refuse with 503, or, in
    failure mode "open", return so that the call goes on unchecked (logged)."""
    metrics.LIMITER_UP.set(0)
    metrics.LIMITER_UNAVAILABLE.inc()
    monitor.limiter_unavailable()
    if settings.SLUICE_LIMITER_FAILURE_MODE == "closed":
        raise ApiError(
            503,
            errors.MSG_LIMITER_DOWN,
            type=errors.SERVER,
            code="limiter_unavailable",
            headers={"retry-after": "1"},
        )
    logger.error("limiter unavailable: admitting %s unchecked (failure mode 'open')", request_id)


def estimate_parts(body: dict[str, Any], endpoint: str) -> tuple[int, int]:
    """Prompt tokens (about 4 characters a token) and the completion it may produce."""
    prompt = _text_size(
        body.get("messages") or body.get("prompt") or body.get("input") or body.get("documents")
    )
    completion = 0
    if endpoint in ("chat", "completions"):
        completion = (
            body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_COMPLETION_TOKENS
        )
        # The edge bounded it (inference._check_counts); a body that reaches here another
        # way (a batch's lines) gets no unbounded number into the limiter either.
        if not isinstance(completion, int) or isinstance(completion, bool) or completion < 0:
            completion = DEFAULT_COMPLETION_TOKENS
        completion = min(completion, errors.MAX_COMPLETION_TOKENS)
    return math.ceil(prompt / 4), completion


def estimate_tokens(body: dict[str, Any], endpoint: str) -> float:
    """Prompt size plus the completion it may produce: what a token limit, and a token
    budget, hold for the call until it is answered."""
    prompt, completion = estimate_parts(body, endpoint)
    return prompt + completion


def estimate_cost(request: Request, endpoint: str, model: str) -> float:
    """US dollars the call may cost: its token estimate (and images) at the price this
    process holds for the model, 0 when it knows none. A dollar budget holds it for the
    call until its usage is reported."""
    price = prices.price(model)
    if price == NO_PRICE:
        return 0.0
    body = request.json()
    prompt, completion = estimate_parts(body, endpoint)
    images = 0
    if endpoint == "images":
        n = body.get("n")
        images = (
            min(n, errors.MAX_N) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        )
    return float(cost_of(price, prompt, completion, images))
