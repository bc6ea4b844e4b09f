"""One request's exchange with its caller over ASGI: reading its body (bounded), the
watch for the caller going away, sending the answer (whole, or a stream chunk by
chunk), and what a revocation that cuts the call changes about the answer.
"""

from __future__ import annotations

import asyncio

from limiter.gateway import errors
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Request, Response, StreamingResponse
from limiter.gateway.revocation import calls

# The most an answered request waits to let go of a body it never read (a server that
# neither has it nor says "disconnect" after the answer).
DISCARD_SECONDS = 1.0


async def read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, errors.MSG_BODY_TOO_LARGE.format(limit=limit), code="request_too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def discard_unread_body(receive) -> None:
    """Let go of a body answered without being read. After the answer, ASGI's receive()
    says http.disconnect (uvicorn does, reading nothing more from the caller); daphne has
    buffered the whole body before calling us and hands it out here, and taking it frees
    it now rather than when daphne cleans the request up."""
    try:
        async with asyncio.timeout(DISCARD_SECONDS):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return


async def _watch_disconnect(receive, task: asyncio.Task | None) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if task is not None:
                task.cancel()
            return


def error_response(exc: ApiError) -> Response:
    response = Response(status=exc.status, body=exc.body())
    for name, value in exc.headers.items():
        response.add_header(name, value)
    return response


async def send_response(send, response: Response | StreamingResponse, request_id: str) -> None:
    headers = [
        (b"content-type", response.content_type),
        (b"x-request-id", request_id.encode()),
        *response.headers,
    ]
    if isinstance(response, Response):
        headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        return
    headers.append((b"cache-control", b"no-cache"))
    response.started = True
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    async for chunk in response.chunks:
        response.mid_event = not chunk.endswith(b"\n\n")
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class Exchange:
    """One request and its answer, as the team API sees them through to the end: the
    request once started, the disconnect watcher once its body is read, and what a
    revocation that cut the call changes about the answer."""

    __slots__ = ("request_id", "task", "request", "watcher")

    def __init__(self, request_id: str, task: asyncio.Task | None) -> None:
        self.request_id = request_id
        self.task = task
        self.request: Request | None = None
        self.watcher: asyncio.Task | None = None

    def watch(self, receive) -> None:
        self.watcher = asyncio.ensure_future(_watch_disconnect(receive, self.task))

    def refusal(self) -> ApiError | None:
        """Why this request was cut (its key revoked, its team paused), or None."""
        if self.request is None or self.request.call is None:
            return None
        return self.request.call.refusal

    def untrack(self) -> None:
        if self.request is not None and self.request.call is not None:
            calls.untrack(self.request.call)

    def _uncancel(self) -> None:
        # The cut's cancellation is handled: the task goes on, to answer the caller.
        if self.task is not None:
            self.task.uncancel()

    async def settled(self, response: Response | StreamingResponse) -> Response | StreamingResponse:
        """The answer to send. A call whose key was revoked or team paused meanwhile is
        answered what a new call would get, whatever it came to: the cut usually
        cancelled it, but asyncio may deliver a wait's result and drop the cancellation
        (3.11's wait_for does). Any other answer is sent whole, uncut."""
        refusal = self.refusal()
        if refusal is not None:
            self._uncancel()
            if isinstance(response, StreamingResponse) and response.on_close is not None:
                await asyncio.shield(response.on_close())
            response = error_response(refusal)
        call = self.request.call if self.request is not None else None
        if call is not None and not isinstance(response, StreamingResponse):
            call.cuttable = False  # the answer is decided: send it whole
        return response

    async def cut_while_sending(self, send, response: Response | StreamingResponse) -> None:
        """Sending was cancelled: a stream cut by a revocation ends with its error; a
        caller that went away gets nothing more."""
        refusal = self.refusal()
        if refusal is not None and isinstance(response, StreamingResponse):
            self._uncancel()
            await _end_cut_stream(send, response, refusal, self.request_id)

    async def close(self, response: Response | StreamingResponse) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        self.untrack()
        if isinstance(response, StreamingResponse) and response.on_close is not None:
            await asyncio.shield(response.on_close())


async def _end_cut_stream(
    send, response: StreamingResponse, refusal: ApiError, request_id: str
) -> None:
    """End a stream cut by a revocation with the error as a final SSE event, as OpenAI's
    clients read it (a stream not started yet is answered as a plain error)."""
    if not response.started:
        await send_response(send, error_response(refusal), request_id)
        return
    # A blank line first if the cut fell inside an event, so the error is an event of its own.
    event = (b"\n\n" if response.mid_event else b"") + b"data: " + refusal.body() + b"\n\n"
    await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
