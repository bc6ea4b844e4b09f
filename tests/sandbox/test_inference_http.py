"""Inference endpoints over real HTTP: shapes, streaming, limits, faults and stats."""

from __future__ import annotations

import base64
import json
import time

import httpx

from sandbox import ThreadedSandbox
from tests.waiting import wait_until

from .conftest import CHAT_MODEL, chat_body

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
SUCCESS_HEADERS = (*RATE_HEADERS, "x-tokenlimit-limit", "x-tokenlimit-remaining", "x-request-id")


def sse_events(text: str) -> list[str]:
    assert all(block.startswith("data: ") for block in text.strip().split("\n\n"))
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


def test_chat_completion_shape_usage_and_headers(client: httpx.Client) -> None:
    response = client.post("/chat/completions", json=chat_body(max_tokens=5, top_k=3))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert all(name in response.headers for name in SUCCESS_HEADERS)
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == CHAT_MODEL
    choice = body["choices"][0]
    assert (choice["index"], choice["message"]["role"], choice["finish_reason"]) == (
        0,
        "assistant",
        "stop",
    )
    assert len(choice["message"]["content"].split()) == 5
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_chat_default_length_is_deterministic(client: httpx.Client) -> None:
    first = client.post("/chat/completions", json=chat_body()).json()
    second = client.post("/chat/completions", json=chat_body()).json()
    assert first["usage"]["completion_tokens"] == 16
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_chat_stream_ends_with_usage_then_done(client: httpx.Client) -> None:
    response = client.post("/chat/completions", json=chat_body(stream=True, max_tokens=4))

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == 5
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks[:-1])
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
    assert len(text.split()) == 4


def test_completions_plain_and_streamed(client: httpx.Client) -> None:
    body = {"model": CHAT_MODEL, "prompt": "once upon a time", "max_tokens": 3}
    plain = client.post("/completions", json=body).json()
    assert plain["object"] == "text.completion"
    assert len(plain["choices"][0]["text"].split()) == 3
    assert plain["usage"]["prompt_tokens"] == 4

    streamed = sse_events(client.post("/completions", json={**body, "stream": True}).text)
    assert streamed[-1] == "[DONE]"
    last = json.loads(streamed[-2])
    assert (last["object"], last["usage"]["completion_tokens"]) == ("completion.chunk", 3)


def test_embeddings_are_deterministic_and_carry_no_usage(client: httpx.Client) -> None:
    body = {"model": "BAAI/bge-base-en-v1.5", "input": ["alpha", "beta"]}
    first = client.post("/embeddings", json=body).json()
    single = client.post("/embeddings", json={**body, "input": "alpha"}).json()

    assert set(first) == {"object", "model", "data"}
    assert [item["index"] for item in first["data"]] == [0, 1]
    assert all(
        item["object"] == "embedding" and len(item["embedding"]) == 8 for item in first["data"]
    )
    assert single["data"][0]["embedding"] == first["data"][0]["embedding"]
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]


def test_embeddings_refuse_the_whole_request_for_one_input_too_long(
    client: httpx.Client,
) -> None:
    body = {"model": "BAAI/bge-base-en-v1.5", "input": ["fine", "x" * 8193, "fine too"]}
    refused = client.post("/embeddings", json=body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "input"
    assert "input[1]" in error["message"]
    at_the_limit = client.post("/embeddings", json={**body, "input": ["x" * 8192]})
    assert at_the_limit.status_code == 200


def test_images_base64_is_a_png_and_url_is_served(client: httpx.Client) -> None:
    body = {"model": "black-forest-labs/FLUX.1-schnell", "prompt": "a sluice gate"}
    b64 = client.post("/images/generations", json={**body, "response_format": "base64"}).json()
    assert (b64["object"], b64["data"][0]["index"]) == ("list", 0)
    assert base64.b64decode(b64["data"][0]["b64_json"]).startswith(b"\x89PNG\r\n\x1a\n")

    url = client.post("/images/generations", json={**body, "response_format": "url"}).json()
    image = httpx.get(url["data"][0]["url"])
    assert (image.status_code, image.headers["content-type"]) == (200, "image/png")


def test_rerank_orders_by_relevance_and_honours_top_n(client: httpx.Client) -> None:
    body = {
        "model": "Salesforce/Llama-Rank-V1",
        "query": "rate limits",
        "documents": ["cooking pasta", "rate limits per team", "limits of the law"],
        "top_n": 2,
        "return_documents": True,
    }
    result = client.post("/rerank", json=body).json()
    assert (result["object"], result["model"]) == ("rerank", body["model"])
    assert [r["index"] for r in result["results"]] == [1, 2]
    assert result["results"][0]["document"] == {"text": "rate limits per team"}
    assert result["usage"]["total_tokens"] > 0


def test_models_is_a_bare_array_with_the_catalogue(client: httpx.Client) -> None:
    models = client.get("/models").json()
    assert isinstance(models, list)
    by_id = {model["id"]: model for model in models}
    assert by_id["BAAI/bge-base-en-v1.5"]["type"] == "embedding"
    assert by_id["Salesforce/Llama-Rank-V1"]["type"] == "rerank"
    assert {
        "object",
        "created",
        "display_name",
        "organization",
        "context_length",
        "pricing",
    } <= set(by_id[CHAT_MODEL])


def test_validation_errors_are_together_shaped(client: httpx.Client) -> None:
    missing = client.post("/chat/completions", json={"model": CHAT_MODEL})
    bad_json = client.post(
        "/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    unknown = client.post("/chat/completions", json=chat_body(model="acme/nope"))
    no_path = client.get("/nothing-here")

    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "messages"
    assert (bad_json.status_code, bad_json.json()["error"]["type"]) == (
        400,
        "invalid_request_error",
    )
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "message": (
                "Unable to access model acme/nope. Please visit https://api.together.ai/models "
                "to view the list of supported models."
            ),
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_available",
        }
    }
    assert (no_path.status_code, no_path.headers["content-type"]) == (404, "application/json")


def test_auth_requires_a_key_and_the_configured_one(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    anonymous = httpx.post(f"{sandbox.v1_url}/chat/completions", json=chat_body())
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"

    sandbox.configure({"api_key": "right"})
    assert client.post("/chat/completions", json=chat_body()).status_code == 401
    ok = httpx.post(
        f"{sandbox.v1_url}/chat/completions",
        json=chat_body(),
        headers={"Authorization": "Bearer right"},
    )
    assert ok.status_code == 200


def test_per_second_limit_answers_429_with_headers(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    sandbox.configure({"limits": {"chat": {"requests_per_second": 3}}})
    statuses = [client.post("/chat/completions", json=chat_body()) for _ in range(5)]

    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    assert [statuses[i].headers["x-ratelimit-remaining"] for i in range(3)] == ["2", "1", "0"]
    refused = statuses[3]
    assert refused.json()["error"]["type"] == "dynamic_request_limited"
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 0 < float(refused.headers["x-ratelimit-reset"]) <= 1
    assert refused.headers["retry-after"] == "1"
    # Another key has its own window; another kind is not limited at all.
    other = client.post(
        "/chat/completions", json=chat_body(), headers={"Authorization": "Bearer other"}
    )
    embed = client.post("/embeddings", json={"model": "BAAI/bge-base-en-v1.5", "input": "x"})
    assert (other.status_code, embed.status_code) == (200, 200)

    stats = sandbox.stats()["chat"]
    assert (stats["requests"], stats["ok"], stats["status_429"]) == (6, 4, 2)
    assert stats["max_admitted_in_any_1s_window"] == 4  # 3 for team-key + 1 for "other"
    assert len(stats["admitted_times"]) == 4


def test_fail_next_queue_then_normal_service(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    sandbox.configure({"fail_next": [503, 429, 503], "inject_retry_after_s": 2.5})
    responses = [client.post("/chat/completions", json=chat_body()) for _ in range(4)]

    assert [r.status_code for r in responses] == [503, 429, 503, 200]
    assert responses[0].json() == {
        "error": {
            "message": "The server is overloaded or not ready yet.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert (responses[1].headers["retry-after"], responses[1].headers["x-ratelimit-reset"]) == (
        "3",
        "2.500",
    )
    stats = sandbox.stats()["chat"]
    assert (stats["status_503"], stats["status_429"], stats["ok"]) == (2, 1, 1)


def test_overloaded_model_always_503_while_others_work(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    sandbox.configure({"overloaded_models": [CHAT_MODEL]})
    fallback = "Qwen/Qwen2.5-7B-Instruct-Turbo"
    assert client.post("/chat/completions", json=chat_body()).status_code == 503
    assert client.post("/chat/completions", json=chat_body(model=fallback)).status_code == 200


def test_random_faults_follow_the_configured_rates(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    sandbox.configure({"fail_rate_503": 1.0})
    assert (
        client.post(
            "/embeddings", json={"model": "BAAI/bge-base-en-v1.5", "input": "x"}
        ).status_code
        == 503
    )
    sandbox.configure({"fail_rate_503": 0.0, "fail_rate_429": 1.0})
    limited = client.post("/embeddings", json={"model": "BAAI/bge-base-en-v1.5", "input": "x"})
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "1")


def test_latency_is_added_before_answering(sandbox: ThreadedSandbox, client: httpx.Client) -> None:
    sandbox.configure({"latency_ms": 150})
    started = time.monotonic()
    assert client.post("/chat/completions", json=chat_body()).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_client_disconnect_mid_stream_is_seen(
    sandbox: ThreadedSandbox, client: httpx.Client
) -> None:
    sandbox.configure({"stream_chunk_delay_ms": 50})
    with client.stream(
        "POST", "/chat/completions", json=chat_body(stream=True, max_tokens=40)
    ) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    # Closing the stream closes the connection; the sandbox notices within a chunk or two.
    wait_until(lambda: sandbox.stats()["streams"]["disconnected"], within=3, every=0.02)
    assert sandbox.stats()["streams"] == {"started": 1, "completed": 0, "disconnected": 1}


def test_stats_and_seen_headers_over_http(sandbox: ThreadedSandbox, client: httpx.Client) -> None:
    client.post("/chat/completions", json=chat_body(), headers={"x-request-id": "req-123"})
    stats = httpx.get(f"{sandbox.url}/sandbox/stats").json()

    assert stats["seen_headers"]["x-request-id"] == "req-123"
    assert "authorization" not in stats["seen_headers"]
    assert stats["chat"]["ok"] == 1
    assert set(stats) >= {
        "chat",
        "completions",
        "embeddings",
        "images",
        "rerank",
        "fine_tunes",
        "batches",
    }


def test_control_endpoint_merges_and_resets(sandbox: ThreadedSandbox) -> None:
    control = f"{sandbox.url}/sandbox/control"
    merged = httpx.post(
        control, json={"limits": {"rerank": {"requests_per_minute": 7}}, "latency_ms": 1}
    ).json()
    assert merged["limits"]["rerank"] == {"requests_per_second": None, "requests_per_minute": 7}
    assert httpx.get(f"{sandbox.url}/sandbox/config").json()["latency_ms"] == 1
    assert httpx.post(control, json={"no_such_field": 1}).status_code == 400
    assert httpx.post(control, json={"reset": True}).json()["latency_ms"] == 0
