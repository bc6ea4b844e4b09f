"""A tiny asyncio HTTP/1.1 server for SandboxApp, so tests get a real sandbox without Django.

Daphne (used by `manage.py sandbox`) runs on Twisted's global reactor, which can start only
once per process; tests need many sandboxes, started and stopped at will, on free ports.
This server speaks just enough HTTP/1.1 for httpx and the SDKs: keep-alive, Content-Length
and chunked bodies, chunked streaming responses, and disconnect detection for SSE.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from .app import SandboxApp
from .config import SandboxConfig
from .http import Message

MAX_HEADER_BYTES = 64 * 1024
# How often a waiting `receive()` looks for the client having closed the connection.
DISCONNECT_POLL_S = 0.02


class _BadRequest(Exception):
    pass


class SandboxServer:
    """A SandboxApp listening on a TCP port inside the running event loop."""

    def __init__(self, app: SandboxApp) -> None:
        self.app = app
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """Root URL, as the together SDK wants it (it adds /v1 itself)."""
        return f"http://{self.host}:{self.port}{self.app.prefix}"

    @property
    def v1_url(self) -> str:
        """Base URL for the openai SDK and for plain HTTP clients."""
        return f"{self.url}/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._on_connection, host, port)
        self.host = host
        # Port 0 asked the OS for a free port; report the one actually bound.
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            # Keep-alive connections outlive Server.close(); end them so nothing lingers.
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await _serve_one(self.app, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, _BadRequest):
            pass
        except asyncio.CancelledError:
            # Only aclose() cancels these tasks; ending quietly keeps asyncio from logging
            # every idle keep-alive connection as an error at shutdown.
            pass
        finally:
            self._connections.discard(task)
            writer.close()


async def _serve_one(
    app: SandboxApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Handle one request on the connection; returns whether to keep the connection open."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False  # the client closed an idle keep-alive connection
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("header block too large") from exc
    method, target, version, headers = _parse_head(head)
    if _header(headers, b"expect").lower() == b"100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers)
    keep_alive = version == "HTTP/1.1" and _header(headers, b"connection").lower() != b"close"
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": version.removeprefix("HTTP/"),
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": writer.get_extra_info("peername"),
        "server": writer.get_extra_info("sockname"),
    }
    responder = _Responder(writer, keep_alive)
    try:
        await app(scope, _receiver(body, reader), responder.send)
    except Exception:
        if responder.started:
            return False  # a half-sent response cannot be repaired; drop the connection
        raise
    return keep_alive and responder.finished


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError as exc:
        raise _BadRequest("malformed request line") from exc
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise _BadRequest("malformed header")
        headers.append((name.strip().lower(), value.strip()))
    return method.upper(), target, version, headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return next((value for key, value in headers if key == name), b"")


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[bytes, bytes]]) -> bytes:
    if _header(headers, b"transfer-encoding").lower() == b"chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return b"".join(chunks)
            chunks.append(chunk[:-2])
    length = _header(headers, b"content-length")
    return await reader.readexactly(int(length)) if length else b""


def _receiver(body: bytes, reader: asyncio.StreamReader) -> Callable[[], Awaitable[Message]]:
    """ASGI receive: the whole body once, then http.disconnect when the client closes."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # at_eof() sees the peer's FIN without consuming a pipelined next request; the
        # StreamReader offers no event for that, hence the poll.
        while not reader.at_eof():  # noqa: ASYNC110
            await asyncio.sleep(DISCONNECT_POLL_S)
        return {"type": "http.disconnect"}

    return receive


class _Responder:
    """ASGI send: writes the status line, headers and (chunked, when unsized) body."""

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool) -> None:
        self.writer = writer
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.chunked = False

    async def send(self, message: Message) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("client disconnected")
        if message["type"] == "http.response.start":
            self._start(message["status"], list(message.get("headers", [])))
        elif message["type"] == "http.response.body":
            self._body(message.get("body", b""), message.get("more_body", False))
        await self.writer.drain()

    def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        names = {name.lower() for name, _ in headers}
        if b"content-length" not in names:
            self.chunked = True
            headers.append((b"transfer-encoding", b"chunked"))
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {status} {phrase}".encode()]
        lines += [name + b": " + value for name, value in headers]
        self.writer.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def _body(self, data: bytes, more: bool) -> None:
        if self.chunked:
            if data:
                self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            if not more:
                self.writer.write(b"0\r\n\r\n")
        else:
            self.writer.write(data)
        self.finished = not more


async def serve_in_background(
    host: str = "127.0.0.1",
    port: int = 0,
    config: SandboxConfig | None = None,
    *,
    app: SandboxApp | None = None,
) -> SandboxServer:
    """Start a sandbox in the current event loop; it is listening when this returns.

    Stop it with `await server.aclose()`. Port 0 picks a free port (see `server.port`).
    """
    server = SandboxServer(app or SandboxApp(config))
    await server.start(host, port)
    return server


class ThreadedSandbox:
    """A sandbox served from its own thread and event loop, for sync tests and fixtures.

    `configure`, `reset` and `stats` run on the sandbox's loop, so they never race a request.
    """

    def __init__(
        self, server: SandboxServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.server = server
        self._loop = loop
        self._thread = thread

    app = property(lambda self: self.server.app)
    port = property(lambda self: self.server.port)
    url = property(lambda self: self.server.url)
    v1_url = property(lambda self: self.server.v1_url)

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        return self._call(lambda: self.app.configure(patch))

    def reset(self) -> None:
        self._call(self.app.reset)

    def stats(self) -> dict[str, Any]:
        return self._call(self.app.stats)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.aclose(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> ThreadedSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    config: SandboxConfig | None = None,
    *,
    app: SandboxApp | None = None,
) -> ThreadedSandbox:
    """Serve a sandbox from a daemon thread; returns once it is listening (or raises)."""
    loop = asyncio.new_event_loop()
    ready: Future[SandboxServer] = Future()

    async def start() -> None:
        try:
            ready.set_result(await serve_in_background(host, port, config, app=app))
        except BaseException as exc:  # a bind error must reach the caller, not die here
            ready.set_exception(exc)

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.create_task(start())
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=main, name=f"sandbox-{port}", daemon=True)
    thread.start()
    try:
        server = ready.result(timeout=10)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    return ThreadedSandbox(server, loop, thread)
