"""The official `openai` and `together` SDKs, unchanged but for the base URL, against a
real Sluice server and the sandbox upstream over HTTP."""

from __future__ import annotations

import openai
import pytest
import together

CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
EMBED_MODEL = "BAAI/bge-base-en-v1.5"
IMAGE_MODEL = "black-forest-labs/FLUX.1-schnell"
MESSAGES = [{"role": "user", "content": "Say hello"}]
# One request a minute, no burst beyond one, no queueing: the second call is refused.
ONE_A_MINUTE = {
    "chat": {
        "requests_per_minute": 1,
        "pace_per_minute": None,
        "burst": 1,
        "queue_depth": 0,
        "max_queue_wait_seconds": 0,
    }
}


@pytest.fixture(scope="module")
def key(shared_server) -> str:
    return shared_server.issue_key("sdk-team")


@pytest.fixture(scope="module")
def tight_key(shared_server) -> str:
    shared_server.make_profile("one-a-minute", ONE_A_MINUTE)
    return shared_server.issue_key("sdk-tight", profile="one-a-minute")


@pytest.fixture
def oai(shared_server, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key=key, max_retries=0)


@pytest.fixture
def tog(shared_server, key) -> together.Together:
    # The together SDK 3.x takes the root URL; its paths carry /v1 themselves.
    return together.Together(base_url=shared_server.url, api_key=key, max_retries=0)


class TestOpenAI:
    def test_chat(self, oai):
        reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=5)
        assert reply.choices[0].message.content
        assert reply.usage.total_tokens > 0

    def test_chat_stream_ends_with_usage(self, oai):
        chunks = list(oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(chunks) > 2 and text
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    def test_embeddings(self, oai):
        result = oai.embeddings.create(model=EMBED_MODEL, input=["a", "b"])
        assert [d.index for d in result.data] == [0, 1]
        assert len(result.data[0].embedding) > 0

    def test_images(self, oai):
        result = oai.images.generate(
            model=IMAGE_MODEL, prompt="a lighthouse", response_format="b64_json"
        )
        assert result.data[0].b64_json

    def test_models_list(self, oai):
        ids = [m.id for m in oai.models.list()]
        assert CHAT_MODEL in ids and EMBED_MODEL in ids

    def test_invalid_key_raises_authentication_error(self, shared_server):
        client = openai.OpenAI(
            base_url=f"{shared_server.url}/v1", api_key="sk-sluice-nope", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert caught.value.body["code"] == "invalid_api_key"

    def test_refusal_raises_rate_limit_error_with_retry_after(self, shared_server, tight_key):
        client = openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key=tight_key, max_retries=0)
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        headers = caught.value.response.headers
        assert caught.value.body["code"] == "rate_limited"
        assert headers["x-sluice-limited-by"] == "gateway"
        # One a minute: the next slot is about 60 s away; Retry-After is whole seconds, rounded up.
        assert 55 <= int(headers["retry-after"]) <= 60
        assert abs(int(headers["retry-after-ms"]) / 1000 - int(headers["retry-after"])) < 1
        assert headers["x-ratelimit-limit-requests"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0"


class TestTogether:
    def test_chat(self, tog):
        reply = tog.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=5)
        assert reply.choices[0].message.content

    def test_chat_stream(self, tog):
        chunks = list(tog.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True))
        assert len(chunks) > 2
        assert any(getattr(c, "usage", None) for c in chunks)

    def test_embeddings(self, tog):
        result = tog.embeddings.create(model=EMBED_MODEL, input="hello")
        assert len(result.data[0].embedding) > 0

    def test_images(self, tog):
        result = tog.images.generate(model=IMAGE_MODEL, prompt="a lighthouse")
        assert result.data

    def test_models_list(self, shared_server, key):
        # together 3.x lists models per project: Sluice answers that path with the same list.
        client = together.Together(
            base_url=shared_server.url, api_key=key, max_retries=0, project_id="p"
        )
        assert CHAT_MODEL in [m.id for m in client.models.list()]

    def test_invalid_key_raises_authentication_error(self, shared_server):
        client = together.Together(
            base_url=shared_server.url, api_key="sk-sluice-nope", max_retries=0
        )
        with pytest.raises(together.AuthenticationError):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)

    def test_refusal_raises_rate_limit_error_with_retry_after(self, shared_server):
        shared_server.make_profile("one-a-minute-t", ONE_A_MINUTE)
        client = together.Together(
            base_url=shared_server.url,
            max_retries=0,
            api_key=shared_server.issue_key("sdk-tight-t", profile="one-a-minute-t"),
        )
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        with pytest.raises(together.RateLimitError) as caught:
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert 55 <= int(caught.value.response.headers["retry-after"]) <= 60
