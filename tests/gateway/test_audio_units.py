"""The audio routes' own reading, without a server: the multipart form read in place,
and the seconds of audio a call is charged (WAV header, file size, the answer's
`duration`)."""

from __future__ import annotations

import io
import wave

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limiter.gateway import multipart
from limiter.gateway.audio import (
    MAX_SECONDS,
    answered_seconds,
    estimated_seconds,
    wav_seconds,
)
from limiter.gateway.errors import ApiError


def encoded(data: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    """A form as httpx (and so both SDKs) sends it: its content type and body (a
    multipart one even without a file: a text part named "_")."""
    request = httpx.Request("POST", "http://x/", data=data, files=files or {"_": (None, "")})
    return request.headers["content-type"], request.read()


def wav_of(seconds: float, rate: int = 16000, extra_chunk: bool = False) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(bytes(2 * int(seconds * rate)))
    data = out.getvalue()
    if extra_chunk:  # a LIST chunk between fmt and data, as many encoders write
        data = data[:36] + b"LIST\x05\x00\x00\x00INFOx\x00" + data[36:]
    return data


def test_form_fields_and_file_are_read_in_place():
    content_type, body = encoded(
        {"model": "openai/whisper-large-v3", "prompt": "p" * 10_000, "language": "en"},
        {"file": ("clip.wav", b"\x00" * 5000)},
    )
    form = multipart.parse(content_type, body, wanted=("model", "file"))
    assert form.fields == {"model": "openai/whisper-large-v3"}  # the rest is not decoded
    assert form.files["file"].size == 5000
    assert form.files["file"].head == b"\x00" * multipart.HEAD_BYTES  # its first bytes only


def test_a_file_given_as_a_url_is_a_field():
    content_type, body = encoded({"model": "m", "file": "https://example.com/a.mp3"}, {})
    form = multipart.parse(content_type, body, wanted=("model", "file"))
    assert form.fields["file"] == "https://example.com/a.mp3" and not form.files


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"no boundary here"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--",
        ),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"\r\n'),
        (
            "multipart/form-data; boundary=x",
            b"--x" + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n--x' * 70,
        ),
    ],
)
def test_what_is_not_a_form_is_a_400(content_type, body):
    with pytest.raises(ApiError) as caught:
        multipart.parse(content_type, body, wanted=("model",))
    assert caught.value.status == 400


def test_a_field_too_long_or_not_storable_is_a_400():
    content_type, body = encoded({"model": "m" * (multipart.MAX_FIELD_BYTES + 1)}, {})
    with pytest.raises(ApiError) as caught:
        multipart.parse(content_type, body, wanted=("model",))
    assert caught.value.param == "model"
    content_type, body = encoded({"model": "a\x00b"}, {})
    with pytest.raises(ApiError):
        multipart.parse(content_type, body, wanted=("model",))


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.binary(max_size=400), st.sampled_from(["x", "-----abc", '"q q"']))
def test_any_body_is_a_form_or_a_400(body: bytes, boundary: str):
    framed = b"--" + boundary.strip('"').encode() + b"\r\n" + body
    for candidate in (body, framed):
        try:
            multipart.parse(f"multipart/form-data; boundary={boundary}", candidate, ("model",))
        except ApiError as exc:
            assert exc.status == 400


@pytest.mark.parametrize("extra_chunk", [False, True])
def test_a_wav_header_gives_its_duration(extra_chunk):
    audio = wav_of(2.5, extra_chunk=extra_chunk)
    assert wav_seconds(audio[:4096], len(audio)) == pytest.approx(2.5)
    assert estimated_seconds(multipart.FilePart(len(audio), audio[:4096])) == 3


def test_a_wav_written_as_a_stream_counts_the_rest_of_the_file():
    audio = bytearray(wav_of(1.0))
    audio[40:44] = b"\xff\xff\xff\xff"  # data length unknown when the header was written
    assert wav_seconds(bytes(audio[:4096]), len(audio)) == pytest.approx(1.0)


def test_other_files_are_estimated_at_128_kbit_and_capped():
    assert wav_seconds(b"ID3\x04" + bytes(100), 104) is None
    assert estimated_seconds(multipart.FilePart(16_001, b"ID3")) == 2
    assert estimated_seconds(multipart.FilePart(10**12, b"ID3")) == MAX_SECONDS


@pytest.mark.parametrize(
    ("body", "seconds"),
    [
        (b'{"text": "hi", "duration": 2.01}', 3),
        (b'{"text": "hi", "duration": 0}', 0),
        (b'{"text": "hi"}', None),
        (b'{"duration": true}', None),
        (b'{"duration": -1}', None),
        (b'{"duration": 1e308}', MAX_SECONDS),
        (b"[1]", None),
        (b"not json", None),
    ],
)
def test_the_answered_duration(body, seconds):
    assert answered_seconds(body) == seconds
