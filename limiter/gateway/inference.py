"""Inference routes (chat, completions, embeddings, images, rerank; audio reads its own
bodies in audio.py, then takes the same steps 2-5 through `call`): one path, top-down.

Every call takes the same steps, each in its own module:
  1. read just enough of the body (model, stream, size) into the call's context
     (`context.py`), here. The body itself is forwarded untouched, Together's extra
     parameters included;
  2. admission: the limiter's grant, waiting in the fair queue, or a 429
     (`admission.py`);
  3. send to Together (`sending.py`, each attempt in `forward.py`): 5xx retried in the
     upstream client, a 429 paused and queued again, an overloaded model's fallback;
  4. relay the answer, or Together's error in OpenAI's shape (`relay.py`);
  5. finish: record what the call used and release the grant with the tokens Together
     reported (`metering.Finish`; a stream when it ends).
Embeddings calls are merged with other concurrent ones into one upstream request
(`coalesce.py`, the same steps per caller). Authentication came before (`app.py`);
every 429 is reported to the refusal sink (`sink.py`) where it happens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from limiter.gateway import coalesce, errors, relay
from limiter.gateway.admission import admit, refuse_known
from limiter.gateway.catalog import model_not_found
from limiter.gateway.context import CallContext
from limiter.gateway.errors import ApiError
from limiter.gateway.forward import UpstreamCall
from limiter.gateway.http import Request, Response, StreamingResponse
from limiter.gateway.metering import Finish
from limiter.gateway.sending import send
from limiter.jobs.ownership import owned_models
from limiter.usage.sizing import MAX_COMPLETION_TOKENS, MAX_N, measure

# Endpoint kinds whose handlers take their own grant (the team API must not wrap them).
SELF_LIMITED = frozenset(
    {"chat", "completions", "embeddings", "images", "rerank", "audio_speech", "audio_transcription"}
)


async def _proxy(request: Request, endpoint: str, path: str) -> Response | StreamingResponse:
    # 1. what the call is
    ctx, body, stream = await _context(request, endpoint)
    if endpoint == "embeddings" and coalesce.mergeable(request, body):
        # Merged with other callers' embeddings into one upstream request: steps 2-5 there.
        return await coalesce.embeddings(ctx, body)
    return await call(ctx, request, path, stream=stream)


async def call(
    ctx: CallContext,
    request: Request,
    path: str,
    *,
    stream: bool,
    measured: Callable[[bytes], int | None] | None = None,
) -> Response | StreamingResponse:
    """Steps 2-5 of a call whose context is known (audio calls too: limiter/gateway/
    audio.py). `measured` reads the units a buffered answer says it used (an audio
    call's seconds), None where it says none."""
    # 2. admission
    admission = await admit(ctx)
    finish = Finish(admission)
    try:
        # 3. Together
        forwarded = await send(UpstreamCall.of(ctx, request, path, stream=stream), admission)
        finish.answered(forwarded.response.status_code, forwarded.served_by)
        # 4. the answer
        if forwarded.response.status_code >= 400:
            raise await relay.upstream_error(forwarded, admission)
        if stream:
            return relay.streamed(forwarded, finish)  # 5. when the stream ends
        answer = await relay.buffered(forwarded, finish)
        if measured is not None:
            finish.usage.units = measured(answer.body)
    except BaseException:
        finish()  # 5. what it used recorded, and the grant back settled with it
        raise
    finish()
    return answer


async def _context(request: Request, endpoint: str) -> tuple[CallContext, dict[str, Any], bool]:
    """The call's context (its key, and its body's model and size), its body, and whether
    it streams, once it is known to be a call this team may make."""
    key = request.key
    assert key is not None and request.handles is not None  # the team API sets both
    body = request.json()
    model = model_field(body)
    ctx = CallContext(key, request.request_id, endpoint, request.handles, model)
    if endpoint != "embeddings":  # a merged embeddings call is no plain call
        # A refusal the limiter promised is answered before anything else is read or
        # checked: a flood costs no more than this (limiter/protocol/refused.py), and a
        # key that keeps coming back is held here first.
        await refuse_known(ctx)
        ctx = replace(ctx, promise_checked=True)
    if not await owned_models.usable(team_id=key.team_id, name=model):
        # Another team's fine-tuned model: Together would serve it (one account), so
        # Sluice answers as if it did not exist, before the limiter or Together hear of it.
        raise await model_not_found(key, model)
    stream = stream_field(body)
    _check_counts(body)
    # Reserved where a token limit applies (the limiter knows where: it owns the limits).
    return replace(ctx, size=measure(body, endpoint)), body, stream


def model_field(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400,
            errors.MSG_FIELD_REQUIRED.format(field="model"),
            code="missing_field",
            param="model",
        )
    if len(model) > errors.MAX_ECHOED_MODEL:
        # No model id is this long; refused here, it is never sent on, echoed or fuzzy-matched.
        raise ApiError(
            400,
            errors.MSG_MODEL_TOO_LONG.format(limit=errors.MAX_ECHOED_MODEL),
            code="invalid_value",
            param="model",
        )
    # NUL and lone surrogates ("\ud800") were refused with the body (Request.json): the
    # usage and 429 records store the model, and one such row would fail every flush.
    return model


def stream_field(body: dict[str, Any]) -> bool:
    # Only a boolean: "yes" would get a buffered answer the caller then parses as a stream.
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(
            400,
            errors.MSG_FIELD_NOT_BOOLEAN.format(field="stream"),
            code="invalid_type",
            param="stream",
        )
    return stream is True


# The numbers Sluice itself counts a call by (its token estimate, an image's price), and
# their bounds: an integer, not a boolean; null is unset. An unbounded `max_tokens`
# (10**400) would overflow the limiter's arithmetic, for every team.
COUNTED_FIELDS = {
    "max_tokens": (1, MAX_COMPLETION_TOKENS),
    "max_completion_tokens": (1, MAX_COMPLETION_TOKENS),
    "n": (1, MAX_N),
}


def _check_counts(body: dict[str, Any]) -> None:
    for name, (low, high) in COUNTED_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ApiError(
                400,
                errors.MSG_INTEGER_OUT_OF_RANGE.format(field=name, low=low, high=high),
                code="invalid_value",
                param=name,
            )


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
