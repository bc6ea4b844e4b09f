"""Embeddings coalescing: many small calls, few upstream requests.

Together limits embeddings by requests per minute, and one request may carry many
inputs. So concurrent `POST /v1/embeddings` calls for the same upstream account and
model, from any teams, are merged into one upstream request of up to N inputs (the
caller's profile, `coalesce_max_inputs`), sent as soon as N inputs wait or
`SLUICE_COALESCE_WINDOW_MS` after the first joined. A caller's list is never split
across upstream requests unless it alone holds more than N.

The steps of one caller, top-down in `embeddings`:
  1. its own key's grant, as if it called alone (events.CHARGE_KEY): a team's budget
     does not depend on who else was calling;
  2. join the open batch of its (account, model, parameters): `Coalescer.join`;
  3. wait for its part(s) of the answer; a caller that goes away cancels them, which
     drops it from a batch not sent yet, or discards its result after;
  4. its answer: its embeddings in its order with its own `index`, Together's model
     name, its share of `usage` (when Together sends one), its own quota headers;
  5. its key's grant handed back: settled with its share of the usage, or, when none
     of its inputs went upstream (the account refused, its wait was over, it left
     before the send), handed back unused, so its key is charged nothing: all or
     nothing, as a call alone.

A batch (`Coalescer._send`, in the background: no caller's cancellation reaches it)
takes the account's per-model grant once (events.CHARGE_ACCOUNT) with the tokens of
all its inputs. It queues for it as long as its most patient caller may wait (each
caller's key's max wait, counted from when the caller asked: `client.Patience`,
raised as callers join); meanwhile each caller whose own wait is over gets its own
429, and a batch nobody waits for any more gives its place up. Then it goes through
the same `forward` as every call: a 429 or 503 is retried for all its members as one,
and Together's 429 is recorded for each of them. When Together refuses a merged
request for a bad input (400, 413, 422), its parts are sent again one by one, so that
only the caller whose input was bad gets the error. Any other error is each caller's
own (its quota headers; a 404's hint from its own team's models). Every 429 is in the
record under its own caller's team, key and request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from limiter import metrics
from limiter.gateway import errors
from limiter.gateway.admission import REFUSAL_MESSAGES, Admission, admit, rate_limited
from limiter.gateway.context import CallContext
from limiter.gateway.errors import ApiError
from limiter.gateway.forward import Forwarded, UpstreamCall
from limiter.gateway.http import Request, Response
from limiter.gateway.keys import KeyInfo
from limiter.gateway.metering import Finish, Usage
from limiter.gateway.relay import upstream_error
from limiter.gateway.sending import send
from limiter.gateway.sink import GATEWAY
from limiter.protocol import events
from limiter.protocol.client import Patience, spawn
from limiter.usage.sizing import Size, tokens_of_text

logger = logging.getLogger(__name__)

ENDPOINT, PATH = "embeddings", "/embeddings"
HEADER = "x-sluice-coalesce"  # "false": this call goes alone
# Together refused the merged request because of what one input holds: try each alone.
SPLIT_STATUSES = frozenset({400, 413, 422})
MSG_BAD_ANSWER = "Together's embeddings answer did not hold one embedding per input."
# Retry-After for a caller whose wait ran out while its request waited for a concurrency
# slot, which nobody can predict (the limiter says the same: its UNKNOWN_WAIT).
UNKNOWN_WAIT = 1.0
# A caller's max wait when the limiter did not say (failure mode "open": no queue at all).
DEFAULT_MAX_WAIT = 30.0


def mergeable(request: Request, body: dict[str, Any]) -> bool:
    """Whether this embeddings call may be merged with others: its profile allows it, the
    caller did not say no, and its input is text (a string or a non-empty list of them)."""
    key = request.key
    if key is None or key.coalesce_max_inputs <= 0:
        return False
    if request.headers.get(HEADER, "").strip().lower() in ("false", "0", "no", "off"):
        return False
    if body.get("stream"):
        return False
    texts = body.get("input")
    if isinstance(texts, str):
        return True
    return isinstance(texts, list) and bool(texts) and all(isinstance(t, str) for t in texts)


# --- what a batch hands back to each part ---------------------------------------------------
@dataclass(slots=True)
class Ok:
    data: list[dict[str, Any]]  # this part's embeddings, in its order
    model: str  # the model name Together returned
    usage: dict[str, int] | None  # this part's share, when Together sent a usage block
    upstream_id: str
    served_by: str  # the fallback model, when the requested one stayed overloaded


@dataclass(slots=True)
class Failed:
    error: ApiError | None = None  # Sluice's own (a 429 from the limiter, upstream down)
    forwarded: Forwarded | None = None  # Together's error: each caller answers it its way


@dataclass(eq=False, slots=True)
class Part:
    """Some consecutive inputs of one caller, in one batch. Its future is the caller's:
    cancelled when the caller goes away."""

    texts: list[str]
    joined: float
    future: asyncio.Future[Ok | Failed]
    ctx: CallContext  # the caller's: its 429s are recorded under its own team, key and id
    deadline: float  # until when it may wait for the account (monotonic, this process)
    max_wait: float  # its key's max wait: how long a retry after Together's 429 may queue
    sent: bool = False  # its inputs went upstream (its key's charge stands)

    @property
    def withdrawn(self) -> bool:
        return self.future.done()

    @property
    def size(self) -> int:
        return sum(len(text) for text in self.texts)

    @property
    def tokens(self) -> int:
        return tokens_of_text(self.size)

    def resolve(self, result: Ok | Failed) -> None:
        if not self.future.done():  # a caller that went away: its result is discarded
            self.future.set_result(result)


GroupKey = tuple[str, str, str, int, str]  # account, model, fallback, N, other parameters


@dataclass(eq=False, slots=True)
class Batch:
    """One upstream request in the making. It asks for the account's grant as soon as
    it opens and takes callers until it is full, or until both the grant has come and
    the window since it opened has passed: while it queues behind the account's pace,
    the callers arriving meanwhile ride along instead of queueing requests of their own."""

    group: GroupKey
    # The first caller's: its key's account target and the model's fallback, the model,
    # and the handles (the limiter client, the refusal sink) the request reports through.
    first: CallContext
    params: dict[str, Any]  # the body's other fields, the same for every member
    parts: list[Part] = field(default_factory=list)
    inputs: int = 0
    opened: float = field(default_factory=time.monotonic)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    # How long it may queue for the account: its most patient caller's deadline.
    patience: Patience = field(default_factory=lambda: Patience(-math.inf))
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a caller joined or left

    @property
    def key(self) -> KeyInfo:
        return self.first.key

    @property
    def model(self) -> str:
        return self.first.model

    def add(self, part: Part) -> None:
        self.parts.append(part)
        self.inputs += len(part.texts)
        self.patience.extend(part.deadline)
        self.changed.set()
        part.future.add_done_callback(lambda _future: self.changed.set())


class Coalescer:
    """The open batches of this process, one per (account, model, parameters)."""

    def __init__(self) -> None:
        self._open: dict[GroupKey, Batch] = {}

    def join(
        self,
        ctx: CallContext,
        params: dict[str, Any],
        texts: list[str],
        *,
        deadline: float,
        max_wait: float,
    ) -> list[Part]:
        """Put a caller's inputs in batches; returns its parts in order. Only a list longer
        than N is split: its full chunks go at once, alone, and the rest joins like any call.
        `deadline`: until when the caller may wait for the account (its key's max wait
        from when it asked); `max_wait`: its key's max wait."""
        key, model = ctx.key, ctx.model
        limit = key.coalesce_max_inputs
        group: GroupKey = (
            key.account_id,
            model,
            key.fallbacks.get(model, ""),
            limit,
            json.dumps(params, sort_keys=True, separators=(",", ":")),
        )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        parts: list[Part] = []
        for start in range(0, len(texts), limit):
            chunk = texts[start : start + limit]
            part = Part(chunk, now, loop.create_future(), ctx, deadline, max_wait)
            parts.append(part)
            if len(chunk) == limit:  # a full request on its own: nothing to wait for
                self._start(Batch(group, ctx, params), part, open_=False)
                continue
            batch = self._open.get(group)
            if batch is not None and batch.inputs + len(chunk) > limit:
                self._close(batch)  # the list stays whole: it starts the next one
                batch = None
            if batch is None:
                batch = self._start(Batch(group, ctx, params), part, open_=True)
            else:
                batch.add(part)
            if batch.inputs >= limit:
                self._close(batch)
        return parts

    def _start(self, batch: Batch, part: Part, *, open_: bool) -> Batch:
        batch.add(part)
        if open_:
            self._open[batch.group] = batch
        else:
            batch.full.set()
        spawn(self._send(batch))
        return batch

    def _close(self, batch: Batch) -> None:
        """No one joins it any more; it goes as soon as it has its grant."""
        if self._open.get(batch.group) is batch:
            del self._open[batch.group]
        batch.full.set()

    async def _send(self, batch: Batch) -> None:
        """One upstream request for the batch's parts still wanted; every part is resolved,
        whatever happens."""
        try:
            await self._send_once(batch)
        except Exception:
            logger.exception("a merged embeddings request failed")
            for part in batch.parts:
                part.resolve(
                    Failed(
                        ApiError(
                            500,
                            errors.MSG_INTERNAL.format(request_id="(merged request)"),
                            type=errors.SERVER,
                            code="internal_error",
                        )
                    )
                )
        finally:
            if any(not part.withdrawn for part in batch.parts):  # a path above missed one
                failed = Failed(errors.upstream_unreachable())
                for part in batch.parts:
                    part.resolve(failed)

    async def _send_once(self, batch: Batch) -> None:
        admission = await self._admit(batch)
        if admission is None:
            return
        used: float | None = 0.0
        unused = True  # nothing went upstream (yet): the account's charge comes back
        try:
            window = batch.opened + settings.SLUICE_COALESCE_WINDOW_MS / 1000 - time.monotonic()
            if window > 0 and not batch.full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batch.full.wait(), window)
            self._close(batch)
            parts = [part for part in batch.parts if not part.withdrawn]  # gone before the send
            if not parts:
                return
            # A retry after Together's 429 queues as long as the most patient caller may
            # wait, afresh (as each alone would).
            admission.requeue_wait = max(part.max_wait for part in parts)
            for part in parts:
                part.sent = True
            unused = False
            call = _merged_call(admission.ctx, batch, parts)
            self._observe(batch, parts, sum(len(part.texts) for part in parts))
            used = await self._forward(batch, call, admission, parts)
            if used is None:  # no usage from Together: the estimate of every input sent
                used = float(sum(part.tokens for part in parts))
        finally:
            admission.release(used, unused=unused)

    async def _admit(self, batch: Batch) -> Admission | None:
        """The account's per-model grant, once for the whole upstream request, under a
        context of the merged request's own; None when nobody waits for it any more or
        the limiter refused (each caller then has its answer)."""
        first = batch.first
        ctx = CallContext(
            first.key,
            "req_merged_" + uuid.uuid4().hex,
            ENDPOINT,
            first.handles,
            first.model,
            # Reserved for the first callers' inputs; those joining later are settled at release.
            Size(prompt=sum(part.tokens for part in batch.parts)),
        )
        acquiring = asyncio.ensure_future(
            admit(ctx, charge=events.CHARGE_ACCOUNT, patience=batch.patience)
        )
        try:
            admission = await self._queue(batch, acquiring)
        except ApiError as refused:
            self._close(batch)
            for part in batch.parts:
                self._refuse(batch, part, refused)
            return None
        if admission is None:  # nobody waits for it any more: its place is given up
            self._close(batch)
            return None
        return admission

    async def _queue(self, batch: Batch, acquiring: asyncio.Future[Admission]) -> Admission | None:
        """Wait for the account's grant (`acquiring`). Once the limiter has queued the
        batch, each caller whose own wait is over gets its own 429 at its deadline; when
        no caller is left (their waits over, or they went away), the batch gives its
        place up and returns None. Raises the limiter's refusal (an ApiError)."""
        patience = batch.patience
        while not acquiring.done():
            now = time.monotonic()
            waiting = [part for part in batch.parts if not part.withdrawn]
            if patience.queued.is_set():  # decided: each caller's own wait counts from here
                for part in waiting:
                    if part.deadline <= now:
                        self._refuse(batch, part, _wait_over(batch, now))
                waiting = [part for part in waiting if not part.withdrawn]
            if not waiting:
                self._close(batch)  # a caller arriving now starts the next one
                acquiring.cancel()  # the client sends the limiter a CANCEL
                await asyncio.wait([acquiring])
                break
            batch.changed.clear()
            wakers: list[asyncio.Future[Any]] = [asyncio.ensure_future(batch.changed.wait())]
            timeout = None
            if patience.queued.is_set():
                timeout = min(part.deadline for part in waiting) - now
            else:
                wakers.append(asyncio.ensure_future(patience.queued.wait()))
            try:
                await asyncio.wait(
                    [acquiring, *wakers], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waker in wakers:
                    waker.cancel()
        if acquiring.cancelled():
            return None
        admission = acquiring.result()  # raises the refusal
        if all(part.withdrawn for part in batch.parts):  # granted as the last one left
            admission.release(0.0, unused=True)
            return None
        return admission

    @staticmethod
    def _refuse(batch: Batch, part: Part, error: ApiError) -> None:
        """A caller's answer from Sluice itself; a 429 is recorded under its own team,
        key and request id, as a call alone's would be. A caller gone gets nothing."""
        if part.withdrawn:
            return
        part.resolve(Failed(error))
        if error.status == 429:
            part.ctx.refused(
                reason=error.code or events.RATE_LIMITED,
                source=GATEWAY,
                retry_after=float(error.extra.get("retry_after") or 0.0),
                message=error.message,
            )

    @staticmethod
    def _observe(batch: Batch, parts: list[Part], inputs: int) -> None:
        now = time.monotonic()
        waits = [now - part.joined for part in parts]
        metrics.COALESCED_INPUTS.observe(inputs)
        for wait in waits:
            metrics.COALESCE_WAIT.observe(wait)
        spawn(
            batch.first.limiter.report_coalesced(
                key=batch.key,
                model=batch.model,
                inputs=inputs,
                callers=len(parts),
                waited=sum(waits),
                longest=max(waits),
            )
        )

    async def _forward(
        self, batch: Batch, call: UpstreamCall, admission: Admission, parts: list[Part]
    ) -> float | None:
        """Send and hand each part its answer; returns the tokens to settle the grant with."""
        try:
            forwarded = await send(call, admission)
        except ApiError as exc:  # Together unreachable or too slow: everyone's answer
            for part in parts:
                part.resolve(Failed(exc))
            return 0.0
        response = forwarded.response
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        if response.status_code >= 400:
            if response.status_code in SPLIT_STATUSES and len(parts) > 1:
                # One input spoilt it for everyone: each part again on its own (each an
                # upstream request of its own, charged to the account as such).
                await asyncio.gather(*(self._alone(batch, part) for part in parts))
                return 0.0
            for part in parts:
                part.resolve(Failed(forwarded=forwarded))
            return 0.0
        try:
            payload = json.loads(content)
            data = sorted(payload["data"], key=lambda item: item["index"])
            model = str(payload.get("model") or admission.ctx.model)
        except (ValueError, KeyError, TypeError):
            data, model, payload = [], "", {}
        if len(data) != sum(len(part.texts) for part in parts):
            logger.error("merged embeddings answer: %d items for %d inputs", len(data), len(parts))
            for part in parts:
                part.resolve(Failed(errors.ApiError(502, MSG_BAD_ANSWER, type=errors.UPSTREAM)))
            return None
        shares = _usage_shares(payload.get("usage"), parts)
        upstream_id = response.headers.get("x-request-id", "")
        offset = 0
        for part, share in zip(parts, shares, strict=True):
            count = len(part.texts)
            part.resolve(
                Ok(data[offset : offset + count], model, share, upstream_id, forwarded.served_by)
            )
            offset += count
        total = (payload.get("usage") or {}).get("total_tokens")
        return float(total) if isinstance(total, int | float) else None

    async def _alone(self, merged: Batch, part: Part) -> None:
        """One part of a refused merged request, sent again on its own: its wait for the
        account starts afresh, as a retry's would."""
        batch = Batch(merged.group, merged.first, merged.params)
        part.deadline = time.monotonic() + part.max_wait
        batch.add(part)
        batch.full.set()
        await self._send(batch)


def _merged_call(ctx: CallContext, batch: Batch, parts: list[Part]) -> UpstreamCall:
    """The one upstream request of the parts still wanted. Together's 429 is recorded for
    each of their callers under its own team, key and request id."""
    texts = [text for part in parts for text in part.texts]
    body = json.dumps({**batch.params, "model": batch.model, "input": texts}).encode()
    headers = {"content-type": "application/json", "x-request-id": ctx.request_id}
    callers = tuple((part.ctx.key, part.ctx.request_id) for part in parts)
    return UpstreamCall(ctx, PATH, body, headers, callers=callers)


def _wait_over(batch: Batch, now: float) -> ApiError:
    """The 429 of a caller whose own max wait ran out while its batch queued: retry when
    the limiter's projected wait will have passed (unknown while it waits for a slot)."""
    patience = batch.patience
    retry = max(patience.asked + patience.projected - now, UNKNOWN_WAIT)
    return rate_limited(
        reason=events.QUEUE_TIMEOUT,
        retry_after=retry,
        limited_by="gateway",
        scope="account",
        message=REFUSAL_MESSAGES[events.QUEUE_TIMEOUT].format(endpoint=ENDPOINT, retry=retry),
    )


def _usage_shares(usage: Any, parts: list[Part]) -> list[dict[str, int] | None]:
    """Each part's share of Together's usage block, by the size of its text (largest
    remainders, so the shares add up to Together's figures). None without a usage block."""
    if not isinstance(usage, dict):
        return [None] * len(parts)
    weights = [max(1, part.size) for part in parts]
    total_weight = sum(weights)
    shares: list[dict[str, int]] = [{} for _ in parts]
    for name, value in usage.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        exact = [value * w / total_weight for w in weights]
        floors = [math.floor(x) for x in exact]
        left = value - sum(floors)
        for i in sorted(range(len(parts)), key=lambda i: floors[i] - exact[i])[:left]:
            floors[i] += 1
        for share, amount in zip(shares, floors, strict=True):
            share[name] = amount
    return list(shares)


coalescer = Coalescer()


# --- one caller ------------------------------------------------------------------------------
async def embeddings(ctx: CallContext, body: dict[str, Any]) -> Response:
    """A mergeable embeddings call (see `mergeable`), top-down."""
    asked = time.monotonic()
    # 1. the caller's own key, as if it called alone
    admission = await admit(ctx, charge=events.CHARGE_KEY)
    finish = Finish(admission)
    parts: list[Part] = []
    try:
        single = isinstance(body["input"], str)
        texts: list[str] = [body["input"]] if single else list(body["input"])
        params = {name: value for name, value in body.items() if name not in ("model", "input")}
        # 2. its batch(es); its wait for the account counts from when it asked, as one
        # queue wait would for a call alone
        max_wait = admission.grant.max_wait
        max_wait = DEFAULT_MAX_WAIT if max_wait is None else max_wait
        parts = coalescer.join(ctx, params, texts, deadline=asked + max_wait, max_wait=max_wait)
        # 3. its answers; a cancellation here (the caller left) cancels the parts' futures,
        # which drops them from a batch not sent yet
        results = await asyncio.gather(*(part.future for part in parts))
        # 4. its answer, and 5. what it used (its own share), as a call alone would record
        response, finish.usage, served_by = await _answer(admission, results)
        finish.answered(200, served_by)
        admission.add_quota_headers(response)
        return response
    finally:
        # None of its inputs went upstream: its key is charged nothing (all or nothing).
        finish(unused=not any(part.sent for part in parts))


async def _answer(admission: Admission, results: list[Ok | Failed]) -> tuple[Response, Usage, str]:
    for result in results:
        if isinstance(result, Failed):
            if result.forwarded is not None:
                raise await upstream_error(result.forwarded, admission)
            assert result.error is not None
            # A copy: the same error answers every caller of the batch.
            shared = result.error
            error = ApiError(
                shared.status,
                shared.message,
                type=shared.type,
                code=shared.code,
                param=shared.param,
                headers=dict(shared.headers),
                extra=dict(shared.extra),
            )
            if error.status == 429:  # the caller's own quota, as on every 429
                error.headers.update(admission.quota())
            raise error
    oks = [result for result in results if isinstance(result, Ok)]
    data = [
        {**item, "index": index}
        for index, item in enumerate(item for ok in oks for item in ok.data)
    ]
    body: dict[str, Any] = {"object": "list", "model": oks[0].model, "data": data}
    used = Usage()
    if all(ok.usage is not None for ok in oks):
        usage: dict[str, int] = {}
        for ok in oks:
            for name, value in (ok.usage or {}).items():
                usage[name] = usage.get(name, 0) + value
        body["usage"] = used.reported = usage
        used.tokens = float(usage["total_tokens"]) if "total_tokens" in usage else None
    response = Response.json(body)
    if oks[0].upstream_id:
        response.add_header("x-upstream-request-id", oks[0].upstream_id)
    if oks[0].served_by:
        response.add_header("x-sluice-fallback-model", oks[0].served_by)
    return response, used, oks[0].served_by
