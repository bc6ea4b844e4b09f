"""The sandbox's audio endpoints over real HTTP: Together's shapes (its API reference and
the together SDK's types), its errors, and limits per audio kind."""

from __future__ import annotations

import base64
import io
import json
import wave

import httpx

from sandbox import ThreadedSandbox

SPEECH = {"model": "cartesia/sonic", "input": "two words", "voice": "polite man"}
WHISPER = "openai/whisper-large-v3"


def wav_of(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(bytes(2 * int(seconds * rate)))
    return out.getvalue()


def test_speech_is_a_wav_sized_by_its_input(client: httpx.Client) -> None:
    answer = client.post("/audio/speech", json={**SPEECH, "sample_rate": 16000})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "audio/wav"
    assert "x-ratelimit-limit" in answer.headers
    with wave.open(io.BytesIO(answer.content), "rb") as file:
        assert file.getframerate() == 16000
        assert file.getnframes() == int(len(SPEECH["input"]) * 0.06 * 16000)


def test_speech_raw_and_mp3_content_types(client: httpx.Client) -> None:
    raw = client.post("/audio/speech", json={**SPEECH, "response_format": "raw"})
    mp3 = client.post("/audio/speech", json={**SPEECH, "response_format": "mp3"})
    assert raw.headers["content-type"] == "application/octet-stream"
    assert mp3.headers["content-type"] == "audio/mpeg"
    assert not raw.content.startswith(b"RIFF")


def test_speech_stream_is_base64_chunks_then_done(client: httpx.Client) -> None:
    answer = client.post("/audio/speech", json={**SPEECH, "stream": True})
    assert answer.headers["content-type"] == "text/event-stream"
    events = [block.removeprefix("data: ") for block in answer.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == 2
    assert {(c["object"], c["model"]) for c in chunks} == {("audio.tts.chunk", "cartesia/sonic")}
    assert all(base64.b64decode(c["b64"]) for c in chunks)


def test_speech_errors_in_togethers_shape(client: httpx.Client) -> None:
    missing = client.post("/audio/speech", json={"model": "cartesia/sonic", "input": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "voice"
    unknown = client.post("/audio/speech", json={**SPEECH, "model": "no/such-voice-model"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_available"
    streamed_wav = client.post(
        "/audio/speech", json={**SPEECH, "stream": True, "response_format": "wav"}
    )
    assert streamed_wav.status_code == 400


def test_transcription_json_and_verbose_json(client: httpx.Client) -> None:
    files = {"file": ("a.wav", wav_of(1.5))}
    plain = client.post("/audio/transcriptions", data={"model": WHISPER}, files=files)
    assert plain.status_code == 200
    assert plain.json() == {"text": "Sandbox transcribe of 1.5 seconds of audio."}
    verbose = client.post(
        "/audio/transcriptions",
        data={"model": WHISPER, "response_format": "verbose_json", "language": "fr"},
        files=files,
    ).json()
    assert (verbose["task"], verbose["language"], verbose["duration"]) == ("transcribe", "fr", 1.5)
    assert verbose["segments"] == [{"id": 0, "start": 0.0, "end": 1.5, "text": verbose["text"]}]


def test_translation_and_a_file_by_url(client: httpx.Client) -> None:
    verbose = client.post(
        "/audio/translations",
        data={"model": WHISPER, "response_format": "verbose_json", "file": "https://x/a.mp3"},
        files={"_": (None, "")},  # a multipart body even without an upload
    ).json()
    assert (verbose["task"], verbose["language"]) == ("translate", "english")


def test_transcription_errors(client: httpx.Client) -> None:
    not_a_form = client.post("/audio/transcriptions", json={"model": WHISPER})
    assert not_a_form.status_code == 400
    no_file = client.post("/audio/transcriptions", data={"model": WHISPER}, files={"_": (None, "")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    text_format = client.post(
        "/audio/transcriptions",
        data={"model": WHISPER, "response_format": "srt"},
        files={"file": ("a.wav", wav_of(0.1))},
    )
    assert text_format.status_code == 400


def test_voices_per_model(client: httpx.Client) -> None:
    data = client.get("/voices").json()["data"]
    voices = {entry["model"]: entry["voices"] for entry in data}
    assert {"id", "name"} <= set(voices["cartesia/sonic"][0])
    assert "polite man" in [v["name"] for v in voices["cartesia/sonic"]]


def test_each_audio_kind_is_limited_on_its_own(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    sandbox.configure({"limits": {"audio_speech": {"requests_per_minute": 1}}})
    assert client.post("/audio/speech", json=SPEECH).status_code == 200
    refused = client.post("/audio/speech", json=SPEECH)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "dynamic_request_limited"
    heard = client.post(
        "/audio/transcriptions", data={"model": WHISPER}, files={"file": ("a.wav", wav_of(0.1))}
    )
    assert heard.status_code == 200
    stats = sandbox.stats()
    assert stats["audio_speech"]["status_429"] == 1
    assert stats["audio_transcription"]["ok"] == 1
