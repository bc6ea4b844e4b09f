"""The five inference endpoints: validate the body, build Together-shaped output.

Each handler returns `(response, total_tokens)`; app.py wraps it with auth, limits, faults
and headers, which are the same for every kind.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from .http import ApiError, Request, Response, json_response
from .state import SandboxState
from .textgen import (
    TINY_PNG_B64,
    completion_words,
    count_words,
    embedding,
    message_text,
    relevance,
)

Handler = Callable[[SandboxState, Request, dict[str, Any]], tuple[Response, int]]


def require(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if body.get(name) in (None, "", []):
            raise ApiError(400, f"Missing required parameter: {name}", param=name)


def _max_tokens(state: SandboxState, body: dict[str, Any]) -> int:
    value = body.get("max_tokens")
    if value is None:
        return state.config.default_max_tokens
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, "max_tokens must be a non-negative integer", param="max_tokens")
    return value


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"data: {payload}\n\n".encode()


def _stream(
    state: SandboxState,
    words: list[str],
    chunk: Callable[[str], dict[str, Any]],
    last: dict[str, Any],
) -> Callable[[], AsyncIterator[bytes]]:
    """One SSE event per word, then the usage-bearing last chunk, then [DONE]."""
    delay = state.config.stream_chunk_delay_ms / 1000

    async def events() -> AsyncIterator[bytes]:
        for index, word in enumerate(words):
            if delay and index:
                await asyncio.sleep(delay)
            yield _sse(chunk(word if index == 0 else f" {word}"))
        if delay:
            await asyncio.sleep(delay)
        yield _sse(last)
        yield _sse("[DONE]")

    return events


def chat(state: SandboxState, request: Request, body: dict[str, Any]) -> tuple[Response, int]:
    require(body, "model", "messages")
    if not isinstance(body["messages"], list):
        raise ApiError(400, "messages must be a list", param="messages")
    prompt = message_text(body["messages"])
    words = completion_words(prompt, _max_tokens(state, body))
    usage = _usage(count_words(prompt), len(words))
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(state.wall_clock()),
        "model": body["model"],
    }
    if not body.get("stream"):
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": " ".join(words), "tool_calls": []},
            "finish_reason": "stop",
            "logprobs": None,
        }
        return json_response(
            {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        ), usage["total_tokens"]

    def chunk(text: str) -> dict[str, Any]:
        delta = {"role": "assistant", "content": text}
        return {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }

    last = {
        **base,
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
    return Response(stream=_stream(state, words, chunk, last)), usage["total_tokens"]


def completions(
    state: SandboxState, request: Request, body: dict[str, Any]
) -> tuple[Response, int]:
    require(body, "model", "prompt")
    prompt = (
        body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
    )
    words = completion_words(prompt, _max_tokens(state, body))
    usage = _usage(count_words(prompt), len(words))
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "created": int(state.wall_clock()),
        "model": body["model"],
    }
    if not body.get("stream"):
        choice = {"index": 0, "text": " ".join(words), "finish_reason": "stop", "logprobs": None}
        return json_response(
            {**base, "object": "text.completion", "choices": [choice], "usage": usage}
        ), usage["total_tokens"]

    def chunk(text: str) -> dict[str, Any]:
        return {
            **base,
            "object": "completion.chunk",
            "choices": [{"index": 0, "text": text, "finish_reason": None}],
        }

    last = {
        **base,
        "object": "completion.chunk",
        "choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
        "finish_reason": "stop",
        "usage": usage,
    }
    return Response(stream=_stream(state, words, chunk, last)), usage["total_tokens"]


def embeddings(state: SandboxState, request: Request, body: dict[str, Any]) -> tuple[Response, int]:
    require(body, "model", "input")
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    if not all(isinstance(text, str) for text in texts):
        raise ApiError(400, "input must be a string or a list of strings", param="input")
    state.note_embeddings(body["model"], len(texts))
    longest = state.config.embedding_max_input_chars
    for i, text in enumerate(texts):
        if len(text) > longest:
            # Together refuses the whole request for one input over the model's length.
            raise ApiError(
                400, f"input[{i}] is longer than the model's {longest} characters", param="input"
            )
    data = [
        {"object": "embedding", "embedding": embedding(text), "index": i}
        for i, text in enumerate(texts)
    ]
    # Together's embeddings answer carries no usage block.
    response = {"object": "list", "model": body["model"], "data": data}
    return json_response(response), sum(count_words(text) for text in texts)


def images(state: SandboxState, request: Request, body: dict[str, Any]) -> tuple[Response, int]:
    require(body, "model", "prompt")
    fmt = body.get("response_format") or "url"
    if fmt not in ("url", "base64", "b64_json"):
        raise ApiError(400, "response_format must be 'url' or 'base64'", param="response_format")
    count = body.get("n") or 1
    if not isinstance(count, int) or not 1 <= count <= 4:
        raise ApiError(400, "n must be an integer between 1 and 4", param="n")
    image = (
        {"url": f"{request.base_url}/sandbox/image.png"}
        if fmt == "url"
        else {"b64_json": TINY_PNG_B64}
    )
    data = [{"index": i, **image, "timings": {"inference": 0.01}} for i in range(count)]
    response = {
        "id": f"img-{uuid.uuid4().hex}",
        "model": body["model"],
        "object": "list",
        "data": data,
    }
    return json_response(response), 0


def rerank(state: SandboxState, request: Request, body: dict[str, Any]) -> tuple[Response, int]:
    require(body, "model", "query", "documents")
    documents = body["documents"]
    if not isinstance(documents, list):
        raise ApiError(400, "documents must be a list", param="documents")
    texts = [doc if isinstance(doc, str) else json.dumps(doc, sort_keys=True) for doc in documents]
    scored = sorted(
        (
            {"index": i, "relevance_score": relevance(body["query"], text)}
            for i, text in enumerate(texts)
        ),
        key=lambda result: (-result["relevance_score"], result["index"]),
    )
    top_n = body.get("top_n") or len(scored)
    results = scored[:top_n]
    if body.get("return_documents"):
        for result in results:
            doc = documents[int(result["index"])]
            result["document"] = {"text": doc} if isinstance(doc, str) else doc  # type: ignore[assignment]  # the row is a JSON object
    prompt = count_words(body["query"]) + sum(count_words(text) for text in texts)
    response = {
        "id": f"rr-{uuid.uuid4().hex}",
        "object": "rerank",
        "model": body["model"],
        "results": results,
        "usage": _usage(prompt, 0),
    }
    return json_response(response), prompt


HANDLERS: dict[str, Handler] = {
    "chat": chat,
    "completions": completions,
    "embeddings": embeddings,
    "images": images,
    "rerank": rerank,
}
