"""Step 5 of a call: what it used, for the usage record and budgets, then its grant back.

Tokens come from Together's `usage` block (a stream's last chunk included). Where
Together reports none: an embeddings call counts its inputs and estimates its prompt
tokens (about 4 characters a token, the admission estimate), marked as estimated; an
images call counts its images (`n`, 1 by default); a stream that ended before its last
chunk (the caller went away, the connection broke) is charged its prompt as estimated at
admission and the completion text it relayed: 4 characters a token, or a token an event
relayed, whichever is more, bounded only by the `max_tokens` the caller set (never by
the default admission reserves for a call that sets none), marked as estimated. The
same count settles its token limits (`Usage.tokens`, handed back with the lease).
The counts go to the usage recorder (an in-memory addition; limiter/usage/recorder.py
writes them off the request path), and, when a budget counts the call (its grant said
so), to the limiter as well, where the report settles the reservation the call held
since its admission (limiter/usage/budgets.py). `Finish` is the one end of every call
that holds a grant: meter, then release.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from limiter.gateway.admission import Admission
from limiter.gateway.catalog import refresh_prices
from limiter.gateway.context import CallContext
from limiter.protocol.client import spawn
from limiter.usage.prices import cost_of, prices
from limiter.usage.pricing import priced_units
from limiter.usage.recorder import usage_recorder
from limiter.usage.sizing import AUDIO, Size, tokens_of_text


class Usage:
    """What Together reported the call used: `tokens` (the total, for settling the
    grant) is None until (or unless) it says; `reported` is its `usage` block. A stream
    counts what it relays (`relayed`): its server-sent events and the characters of
    their completion text, what it is charged by should it end before its last chunk
    (`cut`)."""

    __slots__ = ("tokens", "reported", "events", "text", "_partial", "cut_parts", "units")

    def __init__(self) -> None:
        self.tokens: float | None = None
        # Units measured from the answer (an audio call's seconds, from its `duration`);
        # None: the size estimated at admission stands.
        self.units: int | None = None
        self.reported: dict[str, Any] | None = None
        self.events = 0
        self.text = 0  # characters of completion text relayed
        self._partial = b""  # an event's line split across chunks
        self.cut_parts: tuple[int, int] | None = None  # (prompt, completion) once `cut`

    def take(self, data: bytes) -> None:
        """Keep the `usage` block of an answer (or of a stream's last chunk)."""
        self.reported = usage_block(data)
        if self.reported is not None:
            total = self.reported.get("total_tokens")
            if isinstance(total, int | float) and not isinstance(total, bool):
                self.tokens = float(total)

    def relayed(self, chunk: bytes) -> None:
        """Count one chunk of a stream passed to the caller: its events, and the completion
        text in them. This runs for every chunk of every stream, so it decodes nothing: the
        text is what the `content` (chat) and `text` (completions) strings hold as relayed,
        escapes included, so a `\\n` counts 2 (it errs towards charging more)."""
        data = self._partial + chunk
        end = data.rfind(b"\n") + 1
        whole, self._partial = data[:end], data[end:]
        if len(self._partial) > MAX_EVENT_BYTES:  # no line end in sight: count it raw
            self.text += len(self._partial)
            self._partial = b""
        self.events += whole.count(b"data: {")
        self.text += sum(map(len, COMPLETION_TEXT.findall(whole)))

    def cut(self, size: Size) -> None:
        """A stream that ended before the chunk carrying Together's usage: its estimate,
        for the usage record, the budgets and the token limits alike (see the module
        docstring). Nothing when Together's usage came, or nothing was relayed."""
        if self.reported is not None or not self.events:
            return
        completion = max(self.events, tokens_of_text(self.text))
        if size.cap is not None:
            completion = min(completion, size.cap)
        self.cut_parts = (size.prompt, completion)
        self.tokens = float(size.prompt + completion)


# An event's line longer than this without a line end is counted by its bytes.
MAX_EVENT_BYTES = 1 << 20
# A choice's completion text in an event as relayed: `"content": "..."` (chat's delta) or
# `"text": "..."` (completions), its escapes kept. A key that only ends so
# ("reasoning_content") has no quote before it, and does not match.
COMPLETION_TEXT = re.compile(rb'"(?:content|text)":\s*"((?:[^"\\]|\\.)*)"')


_decoder = json.JSONDecoder()


def usage_block(data: bytes) -> dict[str, Any] | None:
    """The top-level `usage` object of a JSON answer, without parsing the whole answer
    (an embeddings answer is mostly vectors): the last `"usage":` key is decoded where
    it stands. None when there is none (Together's embeddings answers carry none)."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    colon = data.find(b":", at + 7)
    if colon < 0:
        return None
    try:
        text = data[colon + 1 : colon + 1 + 2048].decode("utf-8", "replace").lstrip()
        block, _end = _decoder.raw_decode(text)
    except ValueError:
        return None
    return block if isinstance(block, dict) else None


def enabled() -> bool:
    return bool(settings.SLUICE_USAGE_RECORDING)


class Finish:
    """The end of a call that holds a grant: what it used recorded (once Together
    answered it: `answered`), then the grant handed back, settled with the tokens used.
    Once, by whoever ends the call: the handler for a buffered answer or a failure, the
    stream's close for a stream, each caller of a merged embeddings request for itself."""

    __slots__ = ("admission", "usage", "status", "served_by", "_done")

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.usage = Usage()
        self.status: int | None = None  # Together's answer; None: it never answered
        self.served_by = ""  # the fallback model that answered, if any
        self._done = False

    def answered(self, status: int, served_by: str = "") -> None:
        self.status, self.served_by = status, served_by

    def __call__(self, *, unused: bool = False) -> None:
        """Meter, then release; `unused`: none of the call's work went upstream."""
        if self._done:
            return
        self._done = True
        if self.status is not None:
            meter(self.admission, self.status, self.usage, self.served_by)
        self.admission.release(self.usage.tokens, unused=unused)


@dataclass(frozen=True, slots=True)
class Counts:
    """What the usage record keeps of one call."""

    prompt: int
    completion: int
    total: int
    units: int = 0  # images, or embeddings inputs
    estimated: int = 0  # tokens Sluice estimated, Together having reported none


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def counts(ctx: CallContext, status: int, usage: Usage) -> Counts:
    """Together's usage block, or, where it sent none, Sluice's estimate (see the module
    docstring)."""
    reported = usage.reported or {}
    prompt = _count(reported.get("prompt_tokens"))
    completion = _count(reported.get("completion_tokens"))
    total = _count(reported.get("total_tokens")) or prompt + completion
    if status >= 400:
        return Counts(prompt, completion, total)
    size = ctx.size
    if ctx.endpoint == "embeddings":
        if not reported:
            return Counts(size.prompt, completion, size.prompt, size.units, size.prompt)
        return Counts(prompt, completion, total, size.units)
    if ctx.endpoint == "images":
        return Counts(prompt, completion, total, size.units)
    if ctx.endpoint in AUDIO:  # billed by the unit: characters, or seconds of audio
        return Counts(
            prompt, completion, total, usage.units if usage.units is not None else size.units
        )
    if not reported and usage.cut_parts is not None:  # a stream cut before its end
        prompt, completion = usage.cut_parts
        return Counts(prompt, completion, prompt + completion, estimated=prompt + completion)
    return Counts(prompt, completion, total)


def meter(admission: Admission, status: int, usage: Usage, served_by: str = "") -> None:
    """Record one answered call (success or Together's error) and report it to budgets."""
    if not enabled():
        return
    ctx = admission.ctx
    key = ctx.key
    model = served_by or ctx.model
    counted = counts(ctx, status, usage)
    usage_recorder.record(  # at the price in force, or priced when written if none yet
        team_id=key.team_id,
        team_name=key.team_name,
        key_prefix=key.prefix,
        upstream=key.account_name,
        endpoint=ctx.endpoint,
        model=model,
        status=status,
        prompt=counted.prompt,
        completion=counted.completion,
        total=counted.total,
        units=counted.units,
        estimated=counted.estimated,
    )
    known = prices.knows(model)
    if not known and not prices.fetching and usage_recorder.should_refresh(key.account_id):
        spawn(refresh_prices(key))
    if admission.budgeted:
        _report_to_budgets(admission, model, known, counted)


def _report_to_budgets(admission: Admission, model: str, known: bool, counted: Counts) -> None:
    """The report settles the reservation the call's grant holds (taken here, so that
    `Admission.release` does not settle it again at 0)."""
    ctx = admission.ctx
    images = priced_units(ctx.endpoint, counted.units)  # images, characters, seconds
    reservation = admission.take_reservation()
    if known or not prices.fetching:
        cost = cost_of(prices.price(model), counted.prompt, counted.completion, images)
        ctx.limiter.report_usage(
            key_id=ctx.key.key_id,
            model=ctx.model,
            tokens=float(counted.total),
            cost=float(cost),
            reservation=reservation,
        )
        return
    # The process has just started and the model's price is on its way: reported once it
    # is known, tokens and cost together. The reservation holds the call at its estimate
    # meanwhile (at most the start-up fetch's 15 s).
    spawn(_report_when_priced(ctx, model, counted, images, reservation))


async def _report_when_priced(
    ctx: CallContext, model: str, counted: Counts, images: int, reservation: str
) -> None:
    await prices.settled()
    cost = cost_of(prices.price(model), counted.prompt, counted.completion, images)
    ctx.limiter.report_usage(
        key_id=ctx.key.key_id,
        model=ctx.model,
        tokens=float(counted.total),
        cost=float(cost),
        reservation=reservation,
    )
