"""Audio through Sluice: the together and openai SDKs, unchanged but for the base URL,
against a real Sluice server and the sandbox upstream over HTTP. Each route: the answer
the SDK parses, the team's usage row (units and cost by what Together bills), a 429 from
a tight profile row recorded with its reason; an oversize upload is a 413."""

from __future__ import annotations

import base64
import io
import json
import wave
from decimal import Decimal

import httpx
import openai
import pytest
import together

from sandbox.config import SandboxConfig
from tests.servers import SluiceServer
from tests.waiting import wait_until

SPEECH_MODEL = "cartesia/sonic"
HEARING_MODEL = "openai/whisper-large-v3"
PAUSED_MODEL = "sandbox/whisper-paused"  # the sandbox serves it (extra_models) for one test
TEXT = "Sluice shares the account."  # 26 characters
AUDIO_CAP = 200_000  # bytes: SLUICE_MAX_AUDIO_UPLOAD_BYTES for this module's server
# One request a minute of each audio kind: the second call is refused (its wait, a
# minute, is past the queue's 5 s; the first may wait out the account's pace of one a
# second, which the module's other calls share).
ONE_A_MINUTE = {
    kind: {
        "requests_per_minute": 1,
        "pace_per_minute": None,
        "burst": 1,
        "queue_depth": 1,
        "max_queue_wait_seconds": 5,
    }
    for kind in ("audio_speech", "audio_transcription")
}


def wav_of(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(bytes(2 * int(seconds * rate)))
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"SLUICE_MAX_AUDIO_UPLOAD_BYTES": str(AUDIO_CAP)}
    sandbox = SandboxConfig(extra_models=[PAUSED_MODEL])
    with SluiceServer(tmp_path_factory.mktemp("audio"), env=env, sandbox=sandbox) as running:
        running.make_profile("audio-one-a-minute", ONE_A_MINUTE)
        yield running


def client_pair(server: SluiceServer, team: str, profile: str | None = None):
    key = server.issue_key(team, profile=profile)
    return (
        together.Together(base_url=server.url, api_key=key, max_retries=0),
        openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0),
    )


def usage_rows(server: SluiceServer, team: str, endpoint: str, count: int) -> list[dict]:
    """The team's 2xx usage rows of `endpoint`, once they add up to `count` requests."""
    code = (
        "import json\nfrom limiter.usage.models import UsageRollup\n"
        f"rows = UsageRollup.objects.filter(team_name={team!r}, endpoint={endpoint!r},"
        " status_class='2xx').values('model', 'requests', 'units', 'total_tokens', 'cost',"
        " 'image_price')\n"
        "print(json.dumps([{**r, 'cost': str(r['cost']), 'image_price': str(r['image_price'])}"
        " for r in rows]))"
    )
    return wait_until(
        lambda: json.loads(server.python(code)),
        lambda rows: sum(r["requests"] for r in rows) >= count,
        what=f"{team}'s {endpoint} usage recorded",
    )


def refusal_reasons(server: SluiceServer, team: str) -> list[list[str]]:
    code = (
        "import json\nfrom limiter.models import Refusal\n"
        f"print(json.dumps([[r.endpoint, r.model, r.reason, r.source] for r in "
        f"Refusal.objects.filter(team_name={team!r}).order_by('id')]))"
    )
    return wait_until(lambda: json.loads(server.python(code)), what=f"{team}'s 429 recorded")


class TestSpeech:
    def test_together_sdk_gets_a_wav_and_the_characters_are_billed(self, server):
        tog, _ = client_pair(server, "speech-tog")
        audio = tog.audio.speech.create(
            model=SPEECH_MODEL, input=TEXT, voice="laidback woman", response_format="wav"
        )
        assert audio.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(audio.read()), "rb") as file:  # a valid WAV
            assert file.getnframes() > 0
        [row] = usage_rows(server, "speech-tog", "audio_speech", 1)
        # Together bills speech by the character: $65 per million for cartesia/sonic.
        assert (row["model"], row["units"], row["total_tokens"]) == (SPEECH_MODEL, len(TEXT), 0)
        assert Decimal(row["cost"]) == Decimal(65) * len(TEXT) / 1_000_000

    def test_together_sdk_streams_base64_chunks(self, server):
        tog, _ = client_pair(server, "speech-stream")
        chunks = list(
            tog.audio.speech.create(
                model=SPEECH_MODEL,
                input=TEXT,
                voice="polite man",
                stream=True,
                response_format="raw",
            )
        )
        assert len(chunks) == len(TEXT.split())
        assert all(c.object == "audio.tts.chunk" and c.model == SPEECH_MODEL for c in chunks)
        assert sum(len(base64.b64decode(c.b64)) for c in chunks) > 0
        [row] = usage_rows(server, "speech-stream", "audio_speech", 1)
        assert row["units"] == len(TEXT)

    def test_a_stream_is_relayed_as_it_comes(self, server):
        """The first chunk reaches the caller while Together's stream is still running."""
        key = server.issue_key("speech-relay")
        server.sandbox.configure({"stream_chunk_delay_ms": 300})
        try:
            completed = server.sandbox.stats()["streams"]["completed"]
            body = {"model": SPEECH_MODEL, "input": TEXT, "voice": "polite man", "stream": True}
            with httpx.stream(
                "POST",
                f"{server.url}/v1/audio/speech",
                headers={"authorization": f"Bearer {key}"},
                json=body,
                timeout=30,
            ) as answer:
                lines = answer.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                streams_at_first = server.sandbox.stats()["streams"]
                rest = [line for line in lines if line.startswith("data: ")]
        finally:
            server.sandbox.configure({"stream_chunk_delay_ms": 0})
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert json.loads(first[6:])["object"] == "audio.tts.chunk"
        assert streams_at_first["completed"] == completed  # upstream still sending
        assert len(rest) == len(TEXT.split()) and rest[-1] == "data: [DONE]"

    def test_openai_sdk_speech(self, server):
        _, oai = client_pair(server, "speech-oai")
        audio = oai.audio.speech.create(
            model=SPEECH_MODEL, input="Hello", voice="polite man", response_format="wav"
        )
        with wave.open(io.BytesIO(audio.content), "rb") as file:
            assert file.getframerate() == 8000
        [row] = usage_rows(server, "speech-oai", "audio_speech", 1)
        assert row["units"] == len("Hello")

    def test_speech_without_input_is_a_400_before_any_quota(self, server):
        key = server.issue_key("speech-bad")
        answer = httpx.post(
            f"{server.url}/v1/audio/speech",
            headers={"authorization": f"Bearer {key}"},
            json={"model": SPEECH_MODEL, "voice": "polite man"},
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "input"

    def test_tight_profile_refuses_the_second_call_and_records_it(self, server):
        tog, _ = client_pair(server, "speech-tight", profile="audio-one-a-minute")
        tog.audio.speech.create(model=SPEECH_MODEL, input=TEXT, voice="polite man").read()
        with pytest.raises(together.RateLimitError) as caught:
            tog.audio.speech.create(model=SPEECH_MODEL, input=TEXT, voice="polite man")
        assert caught.value.body["error"]["code"] == "rate_limited"
        assert caught.value.response.headers["x-sluice-limited-by"] == "gateway"
        assert refusal_reasons(server, "speech-tight") == [
            ["audio_speech", SPEECH_MODEL, "rate_limited", "gateway"]
        ]


class TestTranscription:
    def test_together_sdk_verbose_json_bills_the_answered_duration(self, server):
        tog, _ = client_pair(server, "hear-tog")
        result = tog.audio.transcriptions.create(
            file=("clip.wav", wav_of(2.5)), model=HEARING_MODEL, response_format="verbose_json"
        )
        assert result.text.startswith("Sandbox transcribe")
        assert result.duration == 2.5 and result.segments[0].end == 2.5
        [row] = usage_rows(server, "hear-tog", "audio_transcription", 1)
        # Billed per second of audio, rounded up: 3 s at $0.0015 a minute.
        assert (row["model"], row["units"]) == (HEARING_MODEL, 3)
        assert Decimal(row["cost"]) == Decimal("0.0015") / 60 * 3

    def test_openai_sdk_json_bills_the_wav_header_duration(self, server):
        _, oai = client_pair(server, "hear-oai")
        result = oai.audio.transcriptions.create(
            model=HEARING_MODEL, file=("clip.wav", wav_of(4.2))
        )
        assert result.text == "Sandbox transcribe of 4.2 seconds of audio."
        # `json` states no duration: the WAV's own header does (4.2 s, 5 s rounded up).
        [row] = usage_rows(server, "hear-oai", "audio_transcription", 1)
        assert row["units"] == 5

    def test_a_file_not_wav_is_estimated_from_its_size(self, server):
        _, oai = client_pair(server, "hear-mp3")
        oai.audio.transcriptions.create(model=HEARING_MODEL, file=("clip.mp3", bytes(48_001)))
        [row] = usage_rows(server, "hear-mp3", "audio_transcription", 1)
        assert row["units"] == 4  # 48,001 bytes at 16,000 a second, rounded up

    def test_a_file_by_url_is_charged_what_the_answer_says(self, server):
        # Together's API takes a URL for `file`; the together SDK 3.1 refuses a str there
        # itself, so the form is sent as Together's API reference shows it.
        key = server.issue_key("hear-url")
        url = "https://example.com/meeting.mp3"  # Together fetches it; the sandbox plays 30 s
        texts = []
        for response_format in ("json", "verbose_json"):
            answer = httpx.post(
                f"{server.url}/v1/audio/transcriptions",
                headers={"authorization": f"Bearer {key}"},
                data={"model": HEARING_MODEL, "file": url, "response_format": response_format},
                files={"language": (None, "en")},  # a multipart form, as the SDKs send
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            texts.append(answer.json()["text"])
        assert texts == ["Sandbox transcribe of 30.0 seconds of audio."] * 2
        rows = usage_rows(server, "hear-url", "audio_transcription", 2)
        # No upload to measure: the json answer's call counts 0, the verbose one its 30 s.
        assert sum(r["units"] for r in rows) == 30

    def test_translations_with_both_sdks(self, server):
        tog, oai = client_pair(server, "hear-translate")
        first = tog.audio.translations.create(file=("a.wav", wav_of(1.0)), model=HEARING_MODEL)
        second = oai.audio.translations.create(model=HEARING_MODEL, file=("b.wav", wav_of(1.0)))
        assert first.text.startswith("Sandbox translate") and second.text == first.text
        rows = usage_rows(server, "hear-translate", "audio_transcription", 2)
        assert sum(r["units"] for r in rows) == 2

    def test_oversize_upload_is_a_413_in_openais_shape(self, server):
        tog, oai = client_pair(server, "hear-big")
        with pytest.raises(openai.APIStatusError) as caught:
            oai.audio.transcriptions.create(
                model=HEARING_MODEL, file=("big.wav", wav_of(AUDIO_CAP / 16_000 + 1))
            )
        assert caught.value.status_code == 413
        assert caught.value.body["code"] == "request_too_large"
        assert str(AUDIO_CAP) in caught.value.body["message"]
        with pytest.raises(together.APIStatusError) as also:
            tog.audio.transcriptions.create(file=("big.wav", bytes(AUDIO_CAP)), model=HEARING_MODEL)
        assert also.value.status_code == 413

    def test_a_form_without_a_file_is_a_400(self, server):
        key = server.issue_key("hear-bad")
        answer = httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            headers={"authorization": f"Bearer {key}"},
            data={"model": HEARING_MODEL},
            files={"other": ("x.txt", b"x")},
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "file"

    def test_tight_profile_refuses_the_second_call_and_records_it(self, server):
        _, oai = client_pair(server, "hear-tight", profile="audio-one-a-minute")
        oai.audio.transcriptions.create(model=HEARING_MODEL, file=("a.wav", wav_of(0.5)))
        with pytest.raises(openai.RateLimitError) as caught:
            oai.audio.translations.create(model=HEARING_MODEL, file=("a.wav", wav_of(0.5)))
        assert caught.value.body["code"] == "rate_limited"
        assert refusal_reasons(server, "hear-tight") == [
            ["audio_transcription", HEARING_MODEL, "rate_limited", "gateway"]
        ]


def test_voices_list_with_the_together_sdk(server):
    tog, _ = client_pair(server, "voices")
    listed = tog.audio.voices.list()
    by_model = {entry.model: [v.name for v in entry.voices] for entry in listed.data}
    assert "laidback woman" in by_model[SPEECH_MODEL]


def test_a_dollar_budget_counts_speech_by_the_character(server):
    """26 characters at $65 a million ($0.00169) spend a $0.001 budget: the next call is
    refused with `budget_exceeded`, and the 429 is recorded."""
    tog, _ = client_pair(server, "speech-budget")
    ops = httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    )
    with ops:
        team = next(t["id"] for t in ops.get("/teams").json() if t["name"] == "speech-budget")
        made = ops.post(
            f"/teams/{team}/budgets", json={"unit": "dollars", "period": "day", "limit": "0.001"}
        )
        assert made.status_code == 201, made.text
        tog.audio.speech.create(model=SPEECH_MODEL, input=TEXT, voice="polite man").read()
        with pytest.raises(together.RateLimitError) as caught:
            tog.audio.speech.create(model=SPEECH_MODEL, input=TEXT, voice="polite man")
        assert caught.value.body["error"]["code"] == "budget_exceeded"
        [budget] = wait_until(
            lambda: ops.get(f"/teams/{team}/budgets").json(),
            lambda rows: Decimal(rows[0]["spent"]) > 0,
            what="the budget's spend",
        )
    assert Decimal(budget["spent"]) == Decimal(65) * len(TEXT) / 1_000_000
    assert refusal_reasons(server, "speech-budget") == [
        ["audio_speech", SPEECH_MODEL, "budget_exceeded", "gateway"]
    ]


def test_togethers_429_on_audio_is_recorded_retried_and_answered(server):
    """Together refusing a transcription: recorded as the upstream's 429 and retried with
    the same form (the answer is the file's); a 429 asking for longer than the call's
    deadline is the caller's 429, saying so. On a model of its own: a 429 pauses and slows
    the model it names, and this module's other tests use the others."""
    _, oai = client_pair(server, "hear-upstream")
    clip = ("a.wav", wav_of(1.0))
    server.sandbox.configure({"fail_next": [429], "inject_retry_after_s": 0.05})
    try:
        retried = oai.audio.transcriptions.create(model=PAUSED_MODEL, file=clip)
        server.sandbox.configure({"fail_next": [429], "inject_retry_after_s": 120})
        with pytest.raises(openai.RateLimitError) as caught:
            oai.audio.transcriptions.create(model=PAUSED_MODEL, file=clip)
    finally:
        server.sandbox.configure({"fail_next": [], "inject_retry_after_s": 1.0})
    assert retried.text == "Sandbox transcribe of 1.0 seconds of audio."
    assert caught.value.body["code"] == "upstream_rate_limited"
    assert caught.value.response.headers["x-sluice-limited-by"] == "upstream"
    reasons = wait_until(
        lambda: refusal_reasons(server, "hear-upstream"),
        lambda rows: len(rows) == 2,
        what="both upstream 429s recorded",
    )
    assert (
        reasons == [["audio_transcription", PAUSED_MODEL, "upstream_rate_limited", "upstream"]] * 2
    )
