"""One real HTTP sandbox for the module's tests, reset before each test so they stay independent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox import SandboxApp, ThreadedSandbox, run_in_thread

CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.fixture(scope="session")
def _sandbox_server() -> Iterator[ThreadedSandbox]:
    with run_in_thread() as server:
        yield server


@pytest.fixture
def sandbox(_sandbox_server: ThreadedSandbox) -> ThreadedSandbox:
    _sandbox_server.reset()
    return _sandbox_server


@pytest.fixture
def client(sandbox: ThreadedSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sandbox.v1_url, headers={"Authorization": "Bearer team-key"}, timeout=10
    ) as c:
        yield c


def chat_body(**extra: object) -> dict[str, object]:
    return {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "hello sandbox world"}],
        **extra,
    }


class FakeClock:
    """The state's clock, moved by hand: tests advance time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def call(
    app: SandboxApp, method: str, path: str, body: bytes = b"", *, key: str = "k"
) -> tuple[int, dict[str, str], bytes]:
    """Run one request through the ASGI interface with no server at all."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {key}".encode()), (b"host", b"testserver")],
    }
    await app(scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


async def post_json(
    app: SandboxApp, path: str, body: dict[str, Any], *, key: str = "k"
) -> tuple[int, dict[str, str], Any]:
    status, headers, raw = await call(app, "POST", path, json.dumps(body).encode(), key=key)
    return status, headers, json.loads(raw)
