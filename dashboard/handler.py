"""Django's part of the ASGI application (dashboard/asgi.py): Django's own ASGI handler,
with two costs of its plumbing cut. What a request runs, and on which thread, is the same.

- The middleware chain and the view run as one synchronous call off the event loop, as
  under WSGI. Every middleware and view of the project is synchronous (WhiteNoise's and
  RuleRequired are sync-only), so Django's async chain passed each middleware's hooks and
  the view across between the event loop and the request's thread one at a time: about
  ten crossings a request, each a future, a wake-up and a context copy.
- Each request still has a thread of its own for all its synchronous work (asgiref's
  ThreadSensitiveContext, as Django sets it), but one that finished an earlier request,
  from a pool, where Django started one for each request and another to join it after.

On the ops API's fuzzing server (tests/fuzz/test_ops_api.py) an unauthenticated request
took about 2.9 ms of the server's CPU with Django's handler and 1.3 ms with this one.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase

# Idle request threads kept for the next requests; a burst's extra threads end after it.
IDLE_THREADS_KEPT = 32


def _nothing() -> None:
    pass


class SyncChainHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # as Django's own handler refuses it
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._idle.pop() if self._idle else self._new_thread()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self._release(executor)

    @staticmethod
    def _new_thread() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-request")

    def _release(self, executor: ThreadPoolExecutor) -> None:
        """Back to the pool once its thread has run everything it was given: a request
        cancelled while its view ran leaves the view running (its one thread runs calls in
        the order given, so a call given now runs after it)."""

        def free(_: Future[None]) -> None:
            if len(self._idle) < IDLE_THREADS_KEPT:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

        executor.submit(_nothing).add_done_callback(free)

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
