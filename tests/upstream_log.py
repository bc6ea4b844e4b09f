"""What the sandbox upstream received: tests that must prove a call never reached
Together record every request the in-process sandbox dispatches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def upstream_calls(sandbox: Any) -> Iterator[list[tuple[str, str]]]:
    """(method, path) of each request the sandbox handles inside the block."""
    app = sandbox.app
    seen: list[tuple[str, str]] = []
    dispatch = app._dispatch

    async def recording(request: Any) -> Any:
        seen.append((request.method, request.path))
        return await dispatch(request)

    app._dispatch = recording  # an instance attribute shadows the method
    try:
        yield seen
    finally:
        del app._dispatch
