"""Django's ASGI handler as Sluice runs it (dashboard/handler.py), in process: the
middleware chain is one synchronous call, and a request's synchronous work runs on one
thread, taken from a pool and given back after."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import iscoroutinefunction
from django.core.signals import request_finished, request_started

from dashboard.handler import SyncChainHandler


@pytest.fixture
def threads_seen() -> Iterator[list[tuple[str, int]]]:
    """The thread each request's start and finish signals ran on."""
    seen: list[tuple[str, int]] = []

    def started(**kwargs: Any) -> None:
        seen.append(("started", threading.get_ident()))

    def finished(**kwargs: Any) -> None:
        seen.append(("finished", threading.get_ident()))

    request_started.connect(started)
    request_finished.connect(finished)
    yield seen
    request_started.disconnect(started)
    request_finished.disconnect(finished)


def test_the_middleware_chain_is_one_synchronous_call() -> None:
    # Django's attribute: what its handler calls, awaited when it is a coroutine function.
    assert not iscoroutinefunction(SyncChainHandler()._middleware_chain)


async def given_back(handler: SyncChainHandler) -> None:
    """Until the thread has run what it was given and is back in the pool."""
    for _ in range(200):
        if handler._idle:
            return
        await asyncio.sleep(0.01)


async def test_a_request_runs_on_one_pooled_thread(threads_seen: list[tuple[str, int]]) -> None:
    handler = SyncChainHandler()
    transport = httpx.ASGITransport(app=handler)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(2):
            response = await client.get("/api/no-such-route")
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
            await given_back(handler)
    assert [event for event, _ in threads_seen] == ["started", "finished"] * 2
    threads = {ident for _, ident in threads_seen}
    # One thread for both requests: the second took the thread the first gave back.
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert len(handler._idle) == 1


async def test_the_thread_of_a_failed_request_returns_once_free() -> None:
    handler = SyncChainHandler()

    async def receive() -> dict[str, Any]:
        raise RuntimeError("the connection broke")

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    with pytest.raises(RuntimeError):
        await handler(scope, receive, send)
    await given_back(handler)  # by the thread itself, once it has run what it was given
    assert len(handler._idle) == 1
