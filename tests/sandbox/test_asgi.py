"""The app as a plain ASGI callable: lifespan, mounting under a prefix, and crash safety."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sandbox import SandboxApp, serve_in_background

from .conftest import call, chat_body


async def test_lifespan_startup_and_shutdown_are_acknowledged() -> None:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await SandboxApp()({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_mounted_under_a_prefix() -> None:
    app = SandboxApp(prefix="/sandbox")
    status, _, body = await call(
        app, "POST", "/sandbox/v1/embeddings", b'{"model": "BAAI/bge-base-en-v1.5", "input": "x"}'
    )
    assert status == 200
    assert json.loads(body)["object"] == "list"
    outside, _, _ = await call(app, "GET", "/v1/models")
    assert outside == 404


async def test_an_unexpected_exception_is_a_json_500(monkeypatch: pytest.MonkeyPatch) -> None:
    app = SandboxApp()

    def explode(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state, "admit", explode)
    status, headers, body = await call(
        app, "POST", "/v1/chat/completions", json.dumps(chat_body()).encode()
    )
    assert (status, headers["content-type"]) == (500, "application/json")
    assert json.loads(body)["error"] == {
        "message": "Sandbox internal error: RuntimeError",
        "type": "server_error",
        "param": None,
        "code": None,
    }


async def test_serve_in_background_on_a_free_port_with_prefix() -> None:
    server = await serve_in_background(app=SandboxApp(prefix="/sandbox"))
    try:
        assert server.port > 0
        assert server.v1_url == f"http://127.0.0.1:{server.port}/sandbox/v1"
        async with httpx.AsyncClient(
            base_url=server.v1_url, headers={"Authorization": "Bearer k"}
        ) as client:
            response = await client.post(
                "/chat/completions", json=chat_body(stream=True, max_tokens=2)
            )
            assert response.text.endswith("data: [DONE]\n\n")
            started = await client.post(
                "/files", data={"purpose": "fine-tune", "file_name": "t.jsonl"}
            )
            assert started.headers["location"].startswith(f"{server.url}/sandbox-upload/")
    finally:
        await server.aclose()
