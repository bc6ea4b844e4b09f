"""The sandbox `make run` mounts: Together as a new organisation meets it (sandbox/presets.py)."""

from __future__ import annotations

import importlib

import httpx

from sandbox import SandboxConfig, run_in_thread
from sandbox.catalog import model_types
from sandbox.presets import SEED_PER_MINUTE, new_organisation

from .conftest import CHAT_MODEL

SEED = {
    **importlib.import_module("limiter.migrations.0002_seed_default_profile").DEFAULTS,
    **importlib.import_module("limiter.migrations.0012_seed_audio_limits").AUDIO_DEFAULTS,
}
KIND_OF_TYPE = {
    "chat": "chat",
    "language": "completions",
    "embedding": "embeddings",
    "rerank": "rerank",
    "image": "images",
    "audio": "audio_speech",
    "transcribe": "audio_transcription",
}
EMBEDDING_MODEL = "BAAI/bge-base-en-v1.5"
IMAGE_MODEL = "black-forest-labs/FLUX.1-schnell"


def test_each_model_starts_at_the_seed_rate_of_its_kind() -> None:
    limits = new_organisation("k").dynamic
    assert limits is not None
    for model, model_type in model_types([]).items():
        seed_rpm = SEED[KIND_OF_TYPE[model_type]][0]
        assert SEED_PER_MINUTE[model_type] == seed_rpm
        assert limits.request_rate(model, successes=0) == seed_rpm, model
    # A model the catalogue does not list (an extra chat model) is a chat model.
    assert limits.request_rate("org/unlisted", successes=0) == SEED["chat"][0]


def test_the_rate_moves_with_successful_traffic() -> None:
    limits = new_organisation("k").dynamic
    assert limits is not None
    # Twice the last hour's successful rate, once that is above the floor; capped.
    busy = limits.request_rate(CHAT_MODEL, successes=900 * 60)
    assert busy == 1800
    assert limits.request_rate(IMAGE_MODEL, successes=10**9) == 4 * 60


def test_the_bare_config_still_limits_nothing() -> None:
    assert SandboxConfig().dynamic is None


def test_headers_per_second_and_limits_enforced_over_http() -> None:
    with (
        run_in_thread(config=new_organisation()) as server,
        httpx.Client(base_url=server.v1_url, headers={"Authorization": "Bearer k"}) as client,
    ):
        chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        first = client.post("/chat/completions", json=chat)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit"] == "10"  # 600 a minute, per second
        assert first.headers["x-ratelimit-limit-dynamic"] == "10"
        embedded = client.post("/embeddings", json={"model": EMBEDDING_MODEL, "input": "x"})
        assert embedded.headers["x-ratelimit-limit"] == "5"
        image = client.post("/images/generations", json={"model": IMAGE_MODEL, "prompt": "x"})
        assert image.status_code == 200
        assert image.headers["x-ratelimit-limit"] == "1"
        # The image model's second request within the same second is refused, as Together would.
        again = client.post("/images/generations", json={"model": IMAGE_MODEL, "prompt": "x"})
        assert again.status_code == 429
        assert again.json()["error"]["type"] == "dynamic_request_limited"
