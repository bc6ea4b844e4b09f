"""Step 3 of a call: send it to Together, and handle what Together says about pace.

`forward` sends the admitted call through the one upstream client (which retries
502/503/504 and transport failures within the deadline). A 429 is handled here, not
in the client, because its retry is another call on the account: it is recorded for
the auditors, reported to the limiter (which pauses the account for everyone, at
once), and the call gives its grant back and queues again behind the pause
(`Admission.requeue`), instead of firing the moment the pause ends. Together's 503s
(capacity, not a limit) are reported too, for the live view's count: they change no pace.

A model that stays overloaded is tried once more with the profile's fallback model.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import httpx
from django.conf import settings

from limiter import metrics, serving
from limiter.gateway import errors
from limiter.gateway.admission import Admission
from limiter.gateway.http import Request
from limiter.gateway.keys import KeyInfo
from limiter.gateway.refusals import recorder
from limiter.protocol.client import spawn
from limiter.upstream import Outcome, UpstreamError, rate_headers, requested_wait
from limiter.upstream import client as upstream

logger = logging.getLogger(__name__)

OVERLOADED = frozenset({502, 503, 504})
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "openai-organization")
HEADER_REPORT_INTERVAL = 1.0  # Together's rate headers go to the dashboard at most once a second


@dataclass(slots=True)
class Forwarded:
    """Together's final answer to the call, and which model served it."""

    outcome: Outcome
    served_by: str = ""  # the fallback model, when the requested one stayed overloaded

    @property
    def response(self) -> httpx.Response:
        return self.outcome.response


async def forward(request: Request, admission: Admission, path: str, *, stream: bool) -> Forwarded:
    """Send the call; on a model that stays overloaded, its fallback. The caller closes
    the answer's response (a stream outlives this call)."""
    key = request.key
    assert key is not None
    outcome = await _send(request, admission, path, request.body, stream=stream)
    fallback = key.fallbacks.get(admission.model)
    if outcome.response.status_code in OVERLOADED and fallback:
        await outcome.response.aclose()
        logger.warning(
            "%s stayed overloaded; serving %s with fallback %s",
            admission.model,
            request.request_id,
            fallback,
        )
        outcome = await _send(
            request, admission, path, _with_model(request.body, fallback), stream=stream
        )
        reporter.headers(key, admission.endpoint, fallback, outcome.response.headers)
        return Forwarded(outcome, served_by=fallback)
    reporter.headers(key, admission.endpoint, admission.model, outcome.response.headers)
    return Forwarded(outcome)


async def _send(
    request: Request, admission: Admission, path: str, body: bytes, *, stream: bool
) -> Outcome:
    """One call with its retries: 5xx inside the upstream client, 429 here (re-queued)."""
    key = request.key
    assert key is not None
    headers = {
        name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers
    }
    headers["x-request-id"] = request.request_id
    started = time.monotonic()
    deadline = started + settings.SLUICE_UPSTREAM_DEADLINE
    attempts = unavailable = 0
    while True:
        try:
            outcome = await upstream.send(
                key.target,
                "POST",
                path,
                content=body,
                headers=headers,
                deadline=deadline,
                stream=stream,
                retry_statuses=OVERLOADED,
            )
        except UpstreamError as exc:
            metrics.UPSTREAM_RESPONSES.labels(admission.endpoint, str(exc.status)).inc()
            if exc.timeout:
                raise errors.ApiError(
                    504, errors.MSG_UPSTREAM_TIMEOUT, type=errors.UPSTREAM, code="upstream_timeout"
                ) from None
            raise errors.upstream_unreachable() from None
        attempts += outcome.attempts
        unavailable += outcome.unavailable
        response = outcome.response
        metrics.UPSTREAM_RESPONSES.labels(admission.endpoint, str(response.status_code)).inc()
        if response.status_code != 429:
            metrics.UPSTREAM_SECONDS.labels(admission.endpoint).observe(time.monotonic() - started)
            if unavailable:  # capacity, not a limit: the live view counts it, no pace changes
                reporter.unavailable(key, admission.endpoint, admission.model, unavailable)
            return Outcome(response, attempts, unavailable)
        wait = requested_wait(response.headers)
        await _rate_limited_upstream(
            request, admission, response, wait if wait is not None else 1.0
        )
        retrying = (
            attempts <= settings.SLUICE_UPSTREAM_MAX_RETRIES
            and time.monotonic() + (wait or 0) < deadline
        )
        if not retrying:
            if unavailable:
                reporter.unavailable(key, admission.endpoint, admission.model, unavailable)
            return Outcome(response, attempts, unavailable)
        await response.aclose()
        await admission.requeue()


async def _rate_limited_upstream(
    request: Request, admission: Admission, response: httpx.Response, pause: float
) -> None:
    """Together said 429: keep it for the auditors (whether or not a retry then works),
    for each caller of a merged request under its own team, key and request id; and
    pause the account for everyone now, before our own retry asks again."""
    key = request.key
    assert key is not None
    await response.aread()
    message = errors.upstream_message(response.content)
    for caller, request_id in request.callers or [(key, request.request_id)]:
        recorder.refusal(
            team_id=caller.team_id,
            team_name=caller.team_name,
            key_prefix=caller.prefix,
            upstream=caller.account_name,
            endpoint=admission.endpoint,
            model=admission.model,
            reason="upstream_rate_limited",
            source="upstream",
            retry_after=pause,
            request_id=request_id,
            message=message,
        )
        metrics.REFUSED.labels(admission.endpoint, "upstream_rate_limited", "upstream").inc()
    await reporter.rate_limited(
        key,
        admission.endpoint,
        admission.model,
        response.headers,
        pause=pause,
        error_type=errors.upstream_type(response.content, 429),
    )


def _with_model(body: bytes, model: str) -> bytes:
    data = json.loads(body)
    data["model"] = model
    return json.dumps(data).encode()


class _Reporter:
    """Tells the limiter what Together said about a model: its rate headers at most once
    a second per account, endpoint and model, and every 429 at once."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], float] = {}

    def headers(self, key: KeyInfo, endpoint: str, model: str, headers: httpx.Headers) -> None:
        now = time.monotonic()
        if now - self._last.get((key.account_id, endpoint, model), 0.0) < HEADER_REPORT_INTERVAL:
            return
        self._last[(key.account_id, endpoint, model)] = now
        found = rate_headers(headers)
        if found:
            spawn(self._report(key, endpoint, model, pause=0.0, headers=found, refused=False))

    def unavailable(self, key: KeyInfo, endpoint: str, model: str, count: int) -> None:
        """Together answered 503 `count` times (capacity): every one is counted."""
        spawn(
            self._report(
                key, endpoint, model, pause=0.0, headers={}, refused=False, unavailable=count
            )
        )

    async def rate_limited(
        self,
        key: KeyInfo,
        endpoint: str,
        model: str,
        headers: httpx.Headers,
        pause: float,
        error_type: str,
    ) -> None:
        # Awaited, not spawned: the pause must reach the limiter before our own retry asks.
        self._last[(key.account_id, endpoint, model)] = time.monotonic()
        await self._report(
            key,
            endpoint,
            model,
            pause=pause,
            headers=rate_headers(headers),
            refused=True,
            error_type=error_type,
        )

    @staticmethod
    async def _report(
        key: KeyInfo,
        endpoint: str,
        model: str,
        *,
        pause: float,
        headers: dict[str, str],
        refused: bool,
        error_type: str = "",
        unavailable: int = 0,
    ) -> None:
        limiter = await serving.ensure_started()
        await limiter.report_upstream(
            key=key,
            endpoint=endpoint,
            model=model,
            pause=pause,
            headers=headers,
            refused=refused,
            error_type=error_type,
            unavailable=unavailable,
        )


reporter = _Reporter()
