"""Step 2 of a call: admission. Ask the limiter, wait in its fair queue, or refuse.

`admit` answers with an `Admission`: the grant the call holds until it is answered.
A refusal is a 429 in the contract's shape (reported to the refusal sink); a limiter that
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

from django.conf import settings

from limiter import metrics
from limiter.alerts.monitor import monitor
from limiter.gateway import errors, revocation
from limiter.gateway.context import CallContext
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Response, StreamingResponse
from limiter.gateway.sink import GATEWAY
from limiter.protocol import events
from limiter.protocol.client import (
    Grant,
    LimiterUnavailable,
    Patience,
    PromisedRefusal,
    Refused,
)
from limiter.protocol.refused import KnownRefusals, LocalRefusal
from limiter.protocol.tasks import until_woken
from limiter.usage.prices import NO_PRICE, cost_of, prices
from limiter.usage.pricing import priced_units

logger = logging.getLogger(__name__)

REFUSAL_MESSAGES = {
    events.RATE_LIMITED: (
        "Rate limit reached for this key on {endpoint}: {limit} requests/min. "
        "Retry after {retry:.2f}s."
    ),
    events.ACCOUNT_RATE_LIMITED: (
        "The shared Together account is at its limit on {endpoint}. Retry after {retry:.2f}s."
    ),
    events.TOKEN_RATE_LIMITED: (
        "Token rate limit reached on {endpoint}. Retry after {retry:.2f}s."
    ),
    events.QUEUE_FULL: (
        "Too many requests of this key are already queued on {endpoint}. Retry after {retry:.2f}s."
    ),
    events.QUEUE_TIMEOUT: (
        "The request waited the longest this key may queue on {endpoint} and was not admitted. "
        "Retry after {retry:.2f}s."
    ),
    events.CONCURRENCY_LIMITED: (
        "Too many concurrent requests on {endpoint}. Retry after {retry:.2f}s."
    ),
    events.UPSTREAM_PAUSED: (
        "Together asked Sluice to slow down on {endpoint}; calls are paused. "
        "Retry after {retry:.2f}s."
    ),
    events.SHARE_USED_UP: (
        "The shared Together account is at its limit on {endpoint} and your team has used "
        "its guaranteed share; teams within theirs go first. Retry after {retry:.2f}s."
    ),
    events.PRIORITY_WAITING: (
        "The shared Together account is at its limit on {endpoint} and calls of a higher "
        "priority are waiting. Retry after {retry:.2f}s."
    ),
}
# What a call that timed out in the queue waited on (the engine's rule), in its message and
# its 429 record.
WAITED_ON = {
    events.RATE_LIMITED: "this key's own rate limit",
    events.TOKEN_RATE_LIMITED: "a token rate limit",
    events.CONCURRENCY_LIMITED: "a concurrency limit",
    events.ACCOUNT_RATE_LIMITED: "the shared account's ceiling",
    events.SHARE_USED_UP: "the shared account's ceiling, with the team's guaranteed share used up",
    events.PRIORITY_WAITING: "calls of a higher priority on the shared account",
    events.UPSTREAM_PAUSED: "Together's pause",
}
MSG_WAITED_ON = " It waited on {rule}."
MSG_RATE_LIMITED = "Rate limited on {endpoint}. Retry after {retry:.2f}s."
MSG_ESTIMATE_OUT_OF_RANGE = "The request's token or cost estimate is out of range."
NO_GRANT = Grant("", 0.0, 0, 0, 0.0)


class Admission:
    """The grant a call holds, released exactly once (shielded from cancellation)."""

    __slots__ = ("ctx", "grant", "budgeted", "charge", "requeue_wait", "reservation")

    def __init__(self, ctx: CallContext, grant: Grant, charge: str = events.CHARGE_BOTH) -> None:
        self.ctx, self.grant, self.charge = ctx, grant, charge  # charge: events.CHARGE_*
        # A budget counts this call: its usage goes to the limiter when it ends, settling
        # the reservation its grant holds (metering takes it; `release` settles one never
        # metered at 0: the call never reached Together).
        self.budgeted = grant.budgeted
        self.reservation = grant.reservation
        # A merged request queues again (after Together's 429) this long at most, its
        # callers' longest max wait; None: its key's (every other call).
        self.requeue_wait: float | None = None

    def release(self, tokens_used: float | None = None, *, unused: bool = False) -> None:
        """Hand the grant back; `tokens_used` settles a token reservation. `unused`: the
        work never went upstream, so the request charge comes back too (a merged
        embeddings caller refused at the account is charged nothing, as a call alone)."""
        grant, self.grant = self.grant, NO_GRANT
        self.ctx.limiter.release(grant.lease, tokens_used, unused=unused)
        reservation, self.reservation = self.reservation, ""
        self.ctx.limiter.unreserve(reservation)

    def take_reservation(self) -> str:
        """The reservation, for the usage report that settles it (so `release` does not
        settle it again at 0)."""
        reservation, self.reservation = self.reservation, ""
        return reservation

    async def requeue(self) -> None:
        """Queue again for a retry after Together's 429, handing the grant back in the
        same step (events.REACQUIRE): every call in flight gets the same 429, and a retry
        that kept its slot while queueing for another would wait on itself under a
        concurrency cap; one that let go first could lose the slot to a newcomer."""
        held, self.grant = self.grant, NO_GRANT
        patience = None
        if self.requeue_wait is not None:
            patience = Patience(time.monotonic() + self.requeue_wait)
        self.grant = await _grant_checked(
            self.ctx, replacing=held.lease, charge=self.charge, patience=patience
        )
        self.budgeted = self.budgeted or self.grant.budgeted
        # The call's reservation is its first grant's (a REACQUIRE reserves nothing new).
        self.reservation = self.reservation or self.grant.reservation

    async def keep_alive(self) -> None:
        """Renew the grant's lease while the call runs (a stream may outlast
        SLUICE_LEASE_TTL; the expiry is for processes that died). Cancelled at the end."""
        if not self.grant.lease:
            return
        while True:
            await asyncio.sleep(settings.SLUICE_LEASE_TTL / 3)
            self.ctx.limiter.renew(self.grant.lease)

    def add_quota_headers(self, response: Response | StreamingResponse) -> None:
        for name, value in self.quota().items():
            response.add_header(name, value)
        if self.grant.waited:
            response.add_header("x-sluice-queued-ms", str(round(self.grant.waited * 1000)))
            if self.grant.waited_on:  # which rule it waited on (a reason code)
                response.add_header("x-sluice-queued-by", self.grant.waited_on)

    def quota(self) -> dict[str, str]:
        return quota_headers(self.grant.limit, self.grant.remaining, self.grant.reset)


async def admit(
    ctx: CallContext, *, charge: str = events.CHARGE_BOTH, patience: Patience | None = None
) -> Admission:
    """Wait for the limiter's grant for this call, or raise the caller's 429 / 503.
    `charge`: the scopes charged (events.CHARGE_*); a merged request charges apart, and
    queues as long as its `patience` (its callers') allows."""
    grant = await _grant_checked(ctx, charge=charge, patience=patience)
    return Admission(ctx, grant, charge)


@asynccontextmanager
async def admitted(ctx: CallContext) -> AsyncIterator[Admission]:
    """A grant held for the block (files, jobs: the per-key request rate)."""
    admission = await admit(ctx)
    try:
        yield admission
    finally:
        admission.release()


async def _grant_checked(
    ctx: CallContext,
    *,
    replacing: str = "",
    charge: str = events.CHARGE_BOTH,
    patience: Patience | None = None,
) -> Grant:
    grant = await _grant(ctx, replacing, charge, patience)
    if charge == events.CHARGE_ACCOUNT:
        return grant  # a merged request: each of its callers' keys was checked at its own grant
    refusal = await revocation.key_refusal(ctx.key)
    if refusal is not None:
        ctx.limiter.release(grant.lease, None)
        ctx.limiter.unreserve(grant.reservation)
        raise refusal
    return grant


async def _grant(ctx: CallContext, replacing: str, charge: str, patience: Patience | None) -> Grant:
    if charge == events.CHARGE_BOTH and patience is None and not replacing and ctx.spends:
        if not ctx.promise_checked:
            await refuse_known(ctx)
    started = time.monotonic()
    # A merged request's body is built later, and its callers' own tickets hold its cost.
    cost = estimate_cost(ctx) if ctx.model and charge != events.CHARGE_ACCOUNT else 0.0
    try:
        grant = await _acquire(ctx, replacing, charge, patience, cost)
    except Refused as refused:
        metrics.LIMITER_UP.set(1)
        raise _refusal(ctx, refused.decision, charge) from None
    except LimiterUnavailable:
        limiter_silent(ctx.request_id)
        return NO_GRANT
    metrics.LIMITER_UP.set(1)
    metrics.ADMITTED.labels(ctx.endpoint).inc()
    if grant.shadow and charge != events.CHARGE_ACCOUNT:  # a merged request's callers' own
        _shadow_refused(ctx, grant)
    if grant.waited:
        metrics.QUEUED.labels(ctx.endpoint).inc()
        metrics.QUEUE_WAIT.labels(ctx.endpoint).observe(grant.waited)
    else:
        metrics.LIMITER_ROUND_TRIP.observe(time.monotonic() - started)
    return grant


async def _acquire(
    ctx: CallContext, replacing: str, charge: str, patience: Patience | None, cost: float
) -> Grant:
    """The limiter's grant; a flooding key's call refused from the promise another call's
    ask brought (PromisedRefusal) is answered as `refuse_known` answers, and asks after
    all if a clear voided that promise while it was held."""
    while True:
        try:
            return await ctx.limiter.acquire(
                key=ctx.key,
                endpoint=ctx.endpoint,
                tokens=ctx.size.tokens,
                request_id=ctx.request_id,
                model=ctx.model,
                replacing=replacing,
                charge=charge,
                patience=patience,
                cost=cost,
                spends=ctx.spends,
            )
        except PromisedRefusal as promised:
            await _refuse_locally(ctx, promised.refusal)


def _shadow_refused(ctx: CallContext, grant: Grant) -> None:
    """A call admitted that shadow limits or budgets would have refused, recorded as such."""
    for would in grant.shadow:
        ctx.refusals.shadow_refused(
            ctx.key,
            ctx.request_id,
            ctx.endpoint,
            ctx.model,
            reason=would["reason"],
            message=would.get("message", ""),
        )


async def refuse_known(ctx: CallContext) -> None:
    """Raise the caller's 429 when the limiter promised to refuse a plain call like this
    one now (limiter/protocol/refused.py): the same 429 and record, without asking it.
    A key that keeps coming back has it held first; returns (the limiter is asked) when
    a configuration change voided the promise meanwhile."""
    known = ctx.limiter.known_refusal(key=ctx.key, endpoint=ctx.endpoint, model=ctx.model)
    if known is not None:
        await _refuse_locally(ctx, known)


async def _refuse_locally(ctx: CallContext, known: LocalRefusal) -> None:
    """Raise the 429 of a local refusal, after its hold; return if a clear voided it."""
    if known.hold and not await _held(ctx.limiter.refusals, known):
        return
    metrics.REFUSED_LOCALLY.inc()
    raise _refusal(ctx, known.answer(ctx.limiter.clock()), events.CHARGE_BOTH)


async def _held(refusals: KnownRefusals, known: LocalRefusal) -> bool:
    """Wait out a refusal's hold: its time, or until a clear or a drain wakes it. True:
    answer it now; False: its promise was cleared (the call is asked of the limiter)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    metrics.REFUSALS_HOLDING.inc()
    try:
        await until_woken(known.hold, known)
    finally:  # a caller that goes away lets go of its hold too
        stands = refusals.released(known)
        metrics.REFUSALS_HOLDING.dec()
        metrics.REFUSALS_HELD.inc()
        metrics.REFUSAL_HELD_SECONDS.inc(loop.time() - started)
    return stands


def _refusal(ctx: CallContext, d: events.DecisionMessage, charge: str) -> ApiError:
    """The caller's answer to the limiter's refusal, reported to the sink."""
    if d["reason"] == events.INVALID_UNITS:
        # Not a rate limit: an estimate the edge should have bounded (a bug, logged).
        logger.error("limiter refused %s: its estimate is out of range", ctx.request_id)
        return ApiError(400, MSG_ESTIMATE_OUT_OF_RANGE, code=events.INVALID_UNITS)
    waited_on = WAITED_ON.get(d.get("rule", ""))
    note = MSG_WAITED_ON.format(rule=waited_on) if waited_on else ""
    if charge != events.CHARGE_ACCOUNT:  # a merged request's: reported for each caller
        ctx.refused(
            reason=d["reason"],
            source=GATEWAY,
            retry_after=d["retry_after"],
            message=d.get("message", "") or note.strip(),
        )
    message = REFUSAL_MESSAGES.get(d["reason"], MSG_RATE_LIMITED) + note
    return rate_limited(
        reason=d["reason"],
        retry_after=d["retry_after"],
        limited_by=GATEWAY,
        scope=d["scope"],
        # The limiter words a budget refusal itself: only it knows the budget.
        message=d.get("message")
        or message.format(endpoint=ctx.endpoint, limit=d["limit"], retry=d["retry_after"]),
        quota=quota_headers(d["limit"], d["remaining"], d["reset"]),
    )


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


def estimate_cost(ctx: CallContext) -> float:
    """US dollars the call may cost: its size (tokens, and images) at the price this
    process holds for the model, 0 when it knows none. A dollar budget holds it for the
    call until its usage is reported."""
    price = prices.price(ctx.model)
    if price == NO_PRICE:
        return 0.0
    size = ctx.size
    units = priced_units(ctx.endpoint, size.units)  # images, characters, seconds of audio
    return float(cost_of(price, size.prompt, size.completion, units))


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
