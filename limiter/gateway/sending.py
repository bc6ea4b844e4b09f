"""Step 3 of a call, decided: send the admitted call, and act on what Together answers.

Each send is one `forward.attempt`. Together's 429 is reported where it arrives
(`forward.rate_limited`: the auditors, and the limiter, which pauses the account for
everyone at once); then, while the retries and the deadline allow, the call gives its
grant back and queues again behind the pause (`Admission.requeue`) instead of firing
the moment the pause ends, and is sent again. A model that stays overloaded is tried
once more with the profile's fallback model.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from limiter import metrics
from limiter.gateway import forward
from limiter.gateway.admission import Admission
from limiter.gateway.forward import OVERLOADED, Forwarded, UpstreamCall, reporter
from limiter.upstream import Outcome, requested_wait

logger = logging.getLogger(__name__)


async def send(call: UpstreamCall, admission: Admission) -> Forwarded:
    """Send the call; on a model that stays overloaded, its fallback. The caller closes
    the answer's response (a stream outlives this call)."""
    ctx = call.ctx
    outcome = await _until_answered(call, admission)
    fallback = ctx.key.fallbacks.get(ctx.model)
    if outcome.response.status_code in OVERLOADED and fallback:
        await outcome.response.aclose()
        logger.warning(
            "%s stayed overloaded; serving %s with fallback %s",
            ctx.model,
            ctx.request_id,
            fallback,
        )
        outcome = await _until_answered(call.with_model(fallback), admission)
        reporter.headers(ctx, fallback, outcome.response.headers)
        return Forwarded(outcome, served_by=fallback)
    reporter.headers(ctx, ctx.model, outcome.response.headers)
    return Forwarded(outcome)


async def _until_answered(call: UpstreamCall, admission: Admission) -> Outcome:
    """Attempts until Together answers other than 429, or the retries or the deadline
    run out (its 429 is then the answer)."""
    ctx = call.ctx
    started = time.monotonic()
    deadline = started + settings.SLUICE_UPSTREAM_DEADLINE
    attempts = unavailable = 0
    while True:
        outcome = await forward.attempt(call, deadline)
        attempts += outcome.attempts
        unavailable += outcome.unavailable
        response = outcome.response
        if response.status_code != 429:
            metrics.UPSTREAM_SECONDS.labels(ctx.endpoint).observe(time.monotonic() - started)
            break
        wait = requested_wait(response.headers)
        await forward.rate_limited(call, response, wait if wait is not None else 1.0)
        retrying = (
            attempts <= settings.SLUICE_UPSTREAM_MAX_RETRIES
            and time.monotonic() + (wait or 0) < deadline
        )
        if not retrying:
            break
        await response.aclose()
        await admission.requeue()
    if unavailable:  # capacity, not a limit: the live view counts it, no pace changes
        reporter.unavailable(ctx, unavailable)
    return Outcome(response, attempts, unavailable)
