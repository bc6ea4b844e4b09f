"""One real HTTP sandbox for the module's tests, reset before each test so they stay independent."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sandbox import ThreadedSandbox, run_in_thread

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
