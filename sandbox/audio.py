"""Together's audio endpoints, as the sandbox plays them (shapes from Together's API
reference and the together SDK's types):

- `POST /v1/audio/speech`: JSON in; audio out, as bytes of the asked `response_format`
  (`wav` by default: a valid WAV of silence, 60 ms a character; `raw`: its PCM; `mp3`:
  the same bytes labelled audio/mpeg, which the sandbox cannot encode), or with
  `stream: true` server-sent events `{"object": "audio.tts.chunk", "model", "b64"}`, a
  word's audio each (`stream_chunk_delay_ms` apart), ending with `data: [DONE]`;
- `POST /v1/audio/transcriptions` and `/translations`: a multipart form with `file` (an
  upload, or a URL) and `model`; `{"text"}` (`json`, the default) or `{"text",
  "language", "duration", "segments", "task"}` (`verbose_json`). The duration is the
  WAV header's, or the file's size at 16,000 bytes a second;
- `GET /v1/voices`: `{"data": [{"model", "voices": [{"id", "name"}]}]}`.
Each handler returns `(response, tokens)` like inference.py's (audio counts no tokens).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
import wave
from collections.abc import AsyncIterator
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from .http import ApiError, Request, Response, json_response
from .inference import require
from .state import SandboxState

VOICES = {
    "cartesia/sonic": ("laidback woman", "polite man", "storyteller lady", "friendly sidekick"),
    "cartesia/sonic-2": ("laidback woman", "polite man", "sweet lady"),
    "hexgrad/Kokoro-82M": ("af_alloy", "am_adam"),
}
SECONDS_PER_CHARACTER = 0.06
DEFAULT_SAMPLE_RATE = 8000  # small answers; Together's default is 44,100
ESTIMATED_BYTES_PER_SECOND = 16_000
_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "raw": "application/octet-stream"}


def speech(state: SandboxState, request: Request, body: dict[str, Any]) -> tuple[Response, int]:
    require(body, "model", "input", "voice")
    if not isinstance(body["input"], str):
        raise ApiError(400, "input must be a string", param="input")
    fmt = body.get("response_format") or "wav"
    if fmt not in _TYPES:
        raise ApiError(400, "response_format must be one of mp3, wav, raw", param="response_format")
    rate = body.get("sample_rate") or DEFAULT_SAMPLE_RATE
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
        raise ApiError(
            400, "sample_rate must be an integer from 8000 to 48000", param="sample_rate"
        )
    if not body.get("stream"):
        pcm = _pcm(len(body["input"]), rate)
        audio = _wav(pcm, rate) if fmt == "wav" else pcm
        return Response(200, audio, content_type=_TYPES[fmt]), 0
    if fmt != "raw" and body.get("response_format"):
        raise ApiError(400, "Streaming supports only response_format raw", param="response_format")
    words, model = body["input"].split() or [body["input"]], body["model"]
    delay = state.config.stream_chunk_delay_ms / 1000

    async def events() -> AsyncIterator[bytes]:
        for index, word in enumerate(words):
            if delay and index:
                await asyncio.sleep(delay)
            chunk = base64.b64encode(_pcm(len(word) + 1, rate)).decode()
            yield _sse({"object": "audio.tts.chunk", "model": model, "b64": chunk})
        yield _sse("[DONE]")

    return Response(stream=events), 0


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _pcm(characters: int, rate: int) -> bytes:
    return bytes(2 * int(characters * SECONDS_PER_CHARACTER * rate))  # 16-bit mono silence


def _wav(pcm: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm)
    return out.getvalue()


def form(request: Request) -> dict[str, Any]:
    """A multipart/form-data body's fields: text as str, an uploaded file as bytes."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "Expected a multipart/form-data body")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + request.body)
    if not message.is_multipart():
        raise ApiError(400, "The multipart body could not be read")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        is_file = part.get_param("filename", header="content-disposition") is not None
        fields[name] = payload if is_file else payload.decode("utf-8", "replace")
    return fields


def transcription(
    state: SandboxState, request: Request, body: dict[str, Any]
) -> tuple[Response, int]:
    require(body, "model", "file")
    fmt = body.get("response_format") or "json"
    if fmt not in ("json", "verbose_json"):
        raise ApiError(400, "response_format must be json or verbose_json", param="response_format")
    audio = body["file"]
    duration = _duration(audio) if isinstance(audio, bytes) else 30.0  # a URL: as if fetched
    task = "translate" if request.path.endswith("/translations") else "transcribe"
    text = f"Sandbox {task} of {duration:.1f} seconds of audio."
    if fmt == "json":
        return json_response({"text": text}), 0
    segment = {"id": 0, "start": 0.0, "end": duration, "text": text}
    language = "english" if task == "translate" else (body.get("language") or "en")
    verbose = {
        "task": task,
        "language": language,
        "duration": duration,
        "text": text,
        "segments": [segment],
    }
    return json_response(verbose), 0


def _duration(audio: bytes) -> float:
    try:
        with wave.open(io.BytesIO(audio), "rb") as file:
            return round(file.getnframes() / file.getframerate(), 3)
    except (wave.Error, EOFError, ZeroDivisionError):
        return round(len(audio) / ESTIMATED_BYTES_PER_SECOND, 3)


def voices(state: SandboxState, request: Request, _id: str) -> Response:
    data = [
        {
            "model": model,
            "voices": [
                {"id": f"voice-{uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:12]}", "name": name}
                for name in names
            ],
        }
        for model, names in VOICES.items()
    ]
    return json_response({"data": data})
