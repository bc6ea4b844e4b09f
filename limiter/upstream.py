"""All HTTP to Together (or the sandbox) goes through this module.

One shared `httpx.AsyncClient` per process with explicit timeouts. Its transport is
chosen by measurement: httpx over aiohttp (`httpx-aiohttp`) costs about a quarter of
the CPU of httpx's default transport with the same API (docs/measured.md), so it is
the default; `SLUICE_UPSTREAM_TRANSPORT=httpx` switches back.

`send` retries what Together means as "later" (429, 502, 503, 504, connection
failures) with backoff and jitter, honouring `retry-after-ms`, `Retry-After` and
`x-ratelimit-reset`, but only within the caller's deadline; it never retries 400, 401,
402, 403 or 404. It knows nothing of the limiter: the team API's inference calls take
429s out of its hands, so that their retries queue in the limiter again
(limiter/gateway/forward.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
from django.conf import settings
from django.utils import timezone
from django.utils.crypto import salted_hmac

from limiter.alerts.monitor import monitor
from limiter.loops import LoopBound
from limiter.models import upstream_key_setting_valid, upstream_url_error

if TYPE_CHECKING:
    from limiter.models import UpstreamAccount

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
# Together's headers the dashboard shows; read leniently, never required.
RATE_HEADER_PREFIXES = ("x-ratelimit-", "x-tokenlimit-")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a call goes: one upstream account's base URL and secret."""

    account_id: str
    account_name: str
    base_url: str
    api_key: str

    def url(self, path: str) -> str:
        """`path` is under the base URL (Together's /v1), except a path under /v2/ (the
        together SDK's video jobs), which is under the root the base URL's /v1 is in."""
        base = self.base_url.rstrip("/")
        if path.startswith("/v2/") and base.endswith("/v1"):
            return base[: -len("/v1")] + path
        return base + path


def sandbox_api_key() -> str:
    """The bearer Sluice sends to the sandbox upstream, and the only one the sandbox mounted
    at /sandbox/ accepts (sandbox/mount.py). Derived from SECRET_KEY, so every process
    of a deployment (web, job poller) agrees on it and nobody else can compute it."""
    return _derived_sandbox_key(settings.SECRET_KEY)


@functools.lru_cache(maxsize=4)
def _derived_sandbox_key(secret_key: str) -> str:
    return salted_hmac(
        "sluice.sandbox-upstream", "api-key", secret=secret_key, algorithm="sha256"
    ).hexdigest()


def upstream_api_key(api_key_setting: str) -> str:
    """The key held by the environment variable an account names; "" for a name that is
    not an upstream key's (checked on save too, but a row may predate that, or be
    written around it). Never any other setting or variable: see UpstreamAccount.clean."""
    if not upstream_key_setting_valid(api_key_setting):
        if api_key_setting not in _refused_settings:  # once per name, not once per request
            _refused_settings.add(api_key_setting)
            logger.error(
                "upstream account names %r for its key: not TOGETHER_API_KEY or "
                "SLUICE_UPSTREAM_KEY_*; no key is sent",
                api_key_setting[:80],
            )
        return ""
    if api_key_setting == "TOGETHER_API_KEY":
        return settings.TOGETHER_API_KEY or os.environ.get(api_key_setting, "")
    return os.environ.get(api_key_setting, "")


_refused_settings: set[str] = set()
_refused_urls: set[str] = set()


def resolve_target(
    *, account_id: str, account_name: str, base_url: str, api_key_setting: str
) -> Target:
    api_key = upstream_api_key(api_key_setting)
    if not api_key and settings.SLUICE_SANDBOX:
        api_key = sandbox_api_key()
    return Target(account_id, account_name, base_url or settings.TOGETHER_BASE_URL, api_key)


def account_target(account: UpstreamAccount) -> Target:
    """Where an upstream account's calls go (a key's is resolved once, when the key
    cache loads it: KeyInfo.target)."""
    return resolve_target(
        account_id=str(account.pk),
        account_name=account.name,
        base_url=account.base_url,
        api_key_setting=account.api_key_setting,
    )


# The detail of the UpstreamError a call gets when its account's base URL is not allowed
# (the team sees a generic 502, like any upstream failure; the log says which account).
MSG_HOST_REFUSED = "the account's base URL is not on SLUICE_UPSTREAM_ALLOWED_HOSTS; nothing sent"


class UpstreamError(Exception):
    """Together could not be reached or did not answer in time (no HTTP answer to pass on)."""

    def __init__(self, status: int, detail: str, *, timeout: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.timeout = timeout


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """The last time an account's upstream gave no answer at all, for the dashboard."""

    account: str
    at: datetime
    detail: str


@dataclass(slots=True)
class Outcome:
    """The final upstream answer and how it was reached."""

    response: httpx.Response
    attempts: int
    unavailable: int = 0  # 503s on the way (Together's capacity), the final answer included


def parse_seconds(value: str | None) -> float | None:
    """A lenient reading of a duration header: '2', '1.5', '250ms', '1m2s'. None if odd."""
    if not value:
        return None
    text = value.strip().lower()
    try:
        if text.endswith("ms"):
            return max(0.0, float(text[:-2]) / 1000)
        if text.endswith("s") and "m" in text:  # OpenAI's "1m2.5s"
            minutes, seconds = text[:-1].split("m", 1)
            return max(0.0, float(minutes) * 60 + float(seconds or 0))
        return max(0.0, float(text.rstrip("s")))
    except ValueError:
        return None


def requested_wait(headers: Mapping[str, str]) -> float | None:
    """How long the upstream asked us to wait, from the headers it sent."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except (KeyError, ValueError):
        pass
    retry_after = parse_seconds(headers.get("retry-after"))
    reset = parse_seconds(headers.get("x-ratelimit-reset"))
    if retry_after is not None and reset is not None and reset <= retry_after < reset + 1:
        # Retry-After is whole seconds: when it is the reset rounded up, the fractional reset
        # is the same wait said exactly (a per-second window frees in 0.05 s, not 1 s).
        return reset
    return retry_after if retry_after is not None else reset


def rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith(RATE_HEADER_PREFIXES)}


def backoff(attempt: int) -> float:
    # Full jitter: spreads the retries of many callers hit by the same 503.
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def _timed_out(exc: httpx.TransportError) -> bool:
    # httpx-aiohttp maps a refused connection to ConnectTimeout; the cause tells the truth.
    cause = exc.__cause__
    if isinstance(cause, OSError) or getattr(cause, "os_error", None) is not None:
        return isinstance(getattr(cause, "os_error", cause), TimeoutError)
    return isinstance(exc, httpx.TimeoutException)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def without_cookies(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The client with a jar that keeps nothing. One client serves every team: a cookie
    Together set for one call must not ride along on another team's (and parsing them
    was 3% of the gateway's CPU).

    httpx has no public way to turn its jar off (its `cookies` setter copies into a new
    plain jar), so this sets the private attribute. httpx is pinned to the minor
    version this was checked against (pyproject.toml), and
    tests/limiter/test_upstream_client.py fails if the attribute stops being the jar.
    """
    client._cookies = _NoCookies()
    return client


@functools.lru_cache(maxsize=512)
def _parsed(url: str) -> httpx.URL:
    """`url` parsed once: a process calls a few URLs (one per account and path).
    An httpx.URL is immutable, so the parsed one is shared by every request to it."""
    return httpx.URL(url)


class UpstreamClient:
    """The process's one HTTP client to Together."""

    def __init__(self) -> None:
        # Created on first use, on the running loop (a client is bound to its loop).
        self._clients: LoopBound[httpx.AsyncClient] = LoopBound(self._build)
        # Per account name, until it answers again. Per process: in scale-out, the
        # dashboard shows what the web process serving the page saw.
        self.failures: dict[str, UpstreamFailure] = {}
        # Each client's own headers (accept, user-agent, ...), names in lower case: read
        # once, since merging its Headers into every request was most of building one.
        self._client_headers: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[str, str]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def client(self) -> httpx.AsyncClient:
        return self._clients.get()

    def _build(self) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=512, max_keepalive_connections=128, keepalive_expiry=30
        )
        timeout = httpx.Timeout(
            connect=settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT,
            read=settings.SLUICE_UPSTREAM_READ_TIMEOUT,
            write=30.0,
            pool=settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT,
        )
        transport: httpx.AsyncBaseTransport
        if settings.SLUICE_UPSTREAM_TRANSPORT == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        else:
            transport = httpx.AsyncHTTPTransport(limits=limits)
        # Redirects are never followed: the files flow passes Location back to the caller.
        return without_cookies(
            httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
        )

    def _headers_of(self, client: httpx.AsyncClient) -> dict[str, str]:
        """The client's own headers (accept, user-agent, ...), names in lower case."""
        found = self._client_headers.get(client)
        if found is None:
            found = {name.lower(): value for name, value in client.headers.items()}
            self._client_headers[client] = found
        return found

    def _failed(self, target: Target, error: UpstreamError) -> None:
        # The detail names the upstream's host and port: for the operators, never the caller.
        logger.warning("upstream account %s unreachable: %s", target.account_name, error.detail)
        self.failures[target.account_name] = UpstreamFailure(
            target.account_name, timezone.now(), error.detail
        )

    def _refused(self, target: Target) -> None:
        if target.base_url not in _refused_urls:  # once per URL, not once per request
            _refused_urls.add(target.base_url)
            logger.error(
                "upstream account %s: base URL %r is not allowed (a host on "
                "SLUICE_UPSTREAM_ALLOWED_HOSTS, https); no call is sent there",
                target.account_name,
                target.base_url[:200],
            )
        self._failed(target, UpstreamError(502, MSG_HOST_REFUSED))

    async def aclose(self) -> None:
        bound = self._clients.bound()
        if bound is not None:
            await bound[1].aclose()
            self._clients.clear()

    async def send(
        self,
        target: Target,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: bytes | str | None = None,
        deadline: float,
        stream: bool = False,
        max_retries: int | None = None,
        retry_statuses: frozenset[int] = RETRYABLE_STATUSES,
    ) -> Outcome:
        """Send one call, retrying transient failures until `deadline` (monotonic time).

        Returns the final response, which may itself be an error to pass on (a 4xx, or
        the last 429/503 when the retries ran out). Raises UpstreamError when no HTTP
        answer came at all. With `stream`, the caller must close the response.

        `retry_statuses` are retried here; the team API's inference calls leave 429 out
        and handle it themselves, because their retry must queue in the limiter again
        (limiter/gateway/forward.py).
        """
        url, send_headers = self._prepare(target, path, headers, params)
        retries = settings.SLUICE_UPSTREAM_MAX_RETRIES if max_retries is None else max_retries
        attempt = unavailable = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamError(504, "deadline passed", timeout=True)
            request = self._request(method, url, content, send_headers, remaining, stream)
            error: UpstreamError | None = None
            try:
                response = await self._send_once(target, request, stream)
            except httpx.TransportError as exc:
                error = _transport_error(exc)
            if error is not None:
                delay = backoff(attempt)
                if _out_of_tries(attempt, retries, delay, deadline):
                    self._failed(target, error)
                    raise error
                happened = f"failed ({error.detail})"
            else:
                unavailable += response.status_code == 503
                if response.status_code not in retry_statuses:
                    return Outcome(response, attempt, unavailable)
                delay = _retry_delay(response, attempt)
                if _out_of_tries(attempt, retries, delay, deadline):
                    return Outcome(response, attempt, unavailable)
                await response.aclose()
                happened = f"answered {response.status_code}"
            logger.info(
                "upstream %s %s %s; retry %d in %.2fs", method, path, happened, attempt, delay
            )
            await asyncio.sleep(delay)

    def _prepare(
        self,
        target: Target,
        path: str,
        headers: Mapping[str, str] | None,
        params: bytes | str | None,
    ) -> tuple[httpx.URL, dict[str, str]]:
        """The URL and headers of a call to `target`, or UpstreamError when its base URL
        is not allowed."""
        if upstream_url_error(target.base_url) is not None:
            # Checked on save too, but a row may be older than the allow-list, or written
            # around the model (raw SQL): the key never goes to a host not allowed.
            self._refused(target)
            raise UpstreamError(502, MSG_HOST_REFUSED)
        # Names in lower case, so that `_request` sends each name once, as httpx's merge would.
        send_headers = {name.lower(): value for name, value in (headers or {}).items()}
        send_headers["accept-encoding"] = "identity"
        if target.api_key:  # none configured: Together answers 401, reported as Sluice's fault
            send_headers["authorization"] = f"Bearer {target.api_key}"
        url = target.url(path)
        if params:  # a caller's query: parsed each time, not kept
            query = params.decode() if isinstance(params, bytes) else params
            return httpx.URL(f"{url}?{query}"), send_headers
        return _parsed(url), send_headers

    def _request(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        headers: dict[str, str],
        remaining: float,
        stream: bool,
    ) -> httpx.Request:
        """One attempt's request, its timeouts within the `remaining` seconds.

        Built here rather than by `client.build_request`, which parses the URL again and
        merges the client's headers, cookies and query into new objects on every call
        (a tenth of a call's CPU under cProfile, which magnifies such pure-Python work;
        docs/measured.md). The client has no base URL, query or cookies (its jar keeps
        none), and its own headers (accept, user-agent, ...) are read once, so the request
        is the one `build_request` would make; tests/limiter/test_upstream_client.py
        compares them."""
        connect = min(settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT, remaining)
        timeout = {
            "connect": connect,
            # A stream may legitimately last longer than the retry deadline.
            "read": settings.SLUICE_UPSTREAM_READ_TIMEOUT if stream else remaining,
            "write": remaining,
            "pool": connect,
        }
        return httpx.Request(
            method,
            url,
            content=content,
            headers={**self._headers_of(self.client), **headers},
            extensions={"timeout": timeout},
        )

    async def _send_once(
        self, target: Target, request: httpx.Request, stream: bool
    ) -> httpx.Response:
        """Send one attempt; an answer is counted for the alerts and ends the account's
        recorded failure."""
        response = await self.client.send(request, stream=stream)
        monitor.upstream_answered(target.account_name, response.status_code)
        if self.failures:
            self.failures.pop(target.account_name, None)
        return response


def _transport_error(exc: httpx.TransportError) -> UpstreamError:
    if _timed_out(exc):
        return UpstreamError(504, f"timed out ({type(exc).__name__})", timeout=True)
    return UpstreamError(502, f"{type(exc).__name__}: {exc}".rstrip(": "))


def _retry_delay(response: httpx.Response, attempt: int) -> float:
    """Seconds before retrying this answer: what Together asked for, plus a little jitter
    so callers paused together do not all come back in the same millisecond; else backoff."""
    asked = requested_wait(response.headers)
    return asked + random.uniform(0, 0.1) if asked is not None else backoff(attempt)


def _out_of_tries(attempt: int, retries: int, delay: float, deadline: float) -> bool:
    """No retry after this attempt: the retries are used up, or the wait would pass the
    deadline."""
    return attempt > retries or time.monotonic() + delay >= deadline


client = UpstreamClient()
