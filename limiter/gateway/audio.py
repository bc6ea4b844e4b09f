"""Audio routes: speech (text in, audio out), transcriptions and translations (audio in,
text out), and the voices list.

Each is a call like chat's (inference.call: admission, Together, the answer, the
finish), of an endpoint kind of its own, with limits of its own in the profile
(`audio_speech`, `audio_transcription`: translations are transcriptions' kind, billed
the same). Together bills them by the unit, and the usage row counts those units:
  - speech: the characters of `input`, known before the call;
  - transcription and translation: seconds of audio. The answer's `duration` when it
    has one (`verbose_json`); else a WAV file's own header (its data size over its byte
    rate); else the file's size at 128 kbit/s (16,000 bytes a second: mp3's common rate,
    which over-counts lower-rate files rather than under-counting); a file given as a URL
    (Together fetches it) counts 0 until the answer says.
Speech is always read from Together as a stream, so its audio (bytes, or with
`stream: true` server-sent events of base64 chunks) reaches the caller as it comes.
The upload is capped (SLUICE_MAX_AUDIO_UPLOAD_BYTES, a 413 before the body is read when
its length is declared: limiter/gateway/app.py) and its form read in place
(multipart.py), then forwarded untouched.
"""

from __future__ import annotations

import json
import math
import struct
import time

from limiter.gateway import errors, multipart
from limiter.gateway.catalog import model_not_found
from limiter.gateway.context import CallContext
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Request, Response, StreamingResponse
from limiter.gateway.inference import call, model_field, stream_field
from limiter.gateway.keys import KeyInfo
from limiter.jobs.ownership import owned_models
from limiter.upstream import UpstreamError
from limiter.upstream import client as upstream
from limiter.usage.sizing import Size

SPEECH = "audio_speech"
TRANSCRIPTION = "audio_transcription"
AUDIO_UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
ESTIMATED_BYTES_PER_SECOND = 16_000  # 128 kbit/s
MAX_SECONDS = 4 * 3600  # Together refuses longer audio (`audio_too_long`)
VOICES_TTL = 300.0

_voices: dict[str, tuple[float, bytes]] = {}


async def speech(request: Request) -> Response | StreamingResponse:
    """POST /v1/audio/speech: JSON in, audio out as Together sends it."""
    key = request.key
    assert key is not None and request.handles is not None  # the team API sets both
    body = request.json()
    model = await _usable(key, model_field(body))
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise ApiError(
            400,
            errors.MSG_FIELD_REQUIRED.format(field="input"),
            code="missing_field",
            param="input",
        )
    stream_field(body)  # a boolean or absent, else a 400; either way relayed as it comes
    ctx = CallContext(
        key, request.request_id, SPEECH, request.handles, model, Size(units=len(text))
    )
    return await call(ctx, request, "/audio/speech", stream=True)


async def transcriptions(request: Request) -> Response | StreamingResponse:
    return await _heard(request, "/audio/transcriptions")


async def translations(request: Request) -> Response | StreamingResponse:
    return await _heard(request, "/audio/translations")


async def _heard(request: Request, path: str) -> Response | StreamingResponse:
    """Audio in (a multipart upload, or a URL), text out, charged by the second."""
    key = request.key
    assert key is not None and request.handles is not None
    form = multipart.parse(request.content_type, request.body, wanted=("model", "file"))
    model = await _usable(key, model_field(form.fields))
    audio = form.files.get("file")
    if audio is None and not form.fields.get("file"):
        raise ApiError(
            400, errors.MSG_FIELD_REQUIRED.format(field="file"), code="missing_field", param="file"
        )
    seconds = estimated_seconds(audio) if audio is not None else 0
    ctx = CallContext(
        key, request.request_id, TRANSCRIPTION, request.handles, model, Size(units=seconds)
    )
    return await call(ctx, request, path, stream=False, measured=answered_seconds)


async def _usable(key: KeyInfo, model: str) -> str:
    # Another team's fine-tuned model is answered as an unknown one (inference.py).
    if not await owned_models.usable(team_id=key.team_id, name=model):
        raise await model_not_found(key, model)
    return model


def estimated_seconds(audio: multipart.FilePart) -> int:
    """Seconds of audio in an upload, before Together says (see the module docstring)."""
    seconds = wav_seconds(audio.head, audio.size)
    if seconds is None:
        seconds = audio.size / ESTIMATED_BYTES_PER_SECOND
    return min(math.ceil(seconds), MAX_SECONDS)


def wav_seconds(head: bytes, size: int) -> float | None:
    """A RIFF/WAVE file's duration from its header: the data chunk's size (or the rest
    of the file, for a stream-written header) over the format's byte rate."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at, byte_rate = 12, 0
    while at + 8 <= len(head):
        chunk, length = head[at : at + 4], struct.unpack_from("<I", head, at + 4)[0]
        if chunk == b"fmt " and at + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, at + 16)[0]
        elif chunk == b"data":
            if not byte_rate:
                return None
            data = min(length, size - at - 8)  # 0xFFFFFFFF: written before its length was known
            return max(data, 0) / byte_rate
        at += 8 + length + (length & 1)
    return None


def answered_seconds(body: bytes) -> int | None:
    """The seconds Together says it heard (`duration`, in `verbose_json`), else None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    duration = data.get("duration") if isinstance(data, dict) else None
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        if math.isfinite(duration) and duration >= 0:
            return min(math.ceil(duration), MAX_SECONDS)
    return None


async def voices(request: Request) -> Response:
    """GET /v1/voices: Together's voices per model, cached for a few minutes per account
    (a list, not a call on a model: no limit applies, like GET /v1/models)."""
    key = request.key
    assert key is not None
    cached = _voices.get(key.account_id)
    if cached and time.monotonic() - cached[0] < VOICES_TTL:
        return Response(body=cached[1])
    try:
        outcome = await upstream.send(key.target, "GET", "/voices", deadline=time.monotonic() + 15)
    except UpstreamError:
        raise errors.upstream_unreachable() from None
    response = outcome.response
    if response.status_code != 200:
        raise ApiError(
            502,
            errors.upstream_message(response.content),
            type=errors.UPSTREAM,
            code="upstream_error",
        )
    _voices[key.account_id] = (time.monotonic(), response.content)
    return Response(body=response.content)
