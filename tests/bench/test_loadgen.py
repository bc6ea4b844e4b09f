"""The load generator reused across plans (bench/procs.py): each plan answered on its own,
in one child, which a failed plan replaces and the end of the block stops."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import procs


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status = 418 if self.path == "/teapot" else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen]:
    """Every load generator child started, in order."""
    started: list[subprocess.Popen] = []
    real = procs.LoadGenerator.__init__

    def counting(self: procs.LoadGenerator) -> None:
        real(self)
        started.append(self.child)

    monkeypatch.setattr(procs.LoadGenerator, "__init__", counting)
    return started


def plan(url: str, requests: int | None, warmup: int = 0) -> dict:
    return {"urls": [url], "body": {}, "concurrency": 2, "requests": requests, "warmup": warmup}


def test_plans_in_one_child_each_counted_on_its_own(server: str, children: list) -> None:
    marks: list[str] = []
    with procs.reused_load_generator():
        first = procs.run_load(plan(f"{server}/a", 5, warmup=3), around=lambda: marks.append("go"))
        second = procs.run_load(plan(f"{server}/teapot", 3))
        third = procs.run_load(plan(f"{server}/a", 4), after=lambda: marks.append("done"))
        assert len(children) == 1 and children[0].poll() is None
    assert (first["statuses"], second["statuses"], third["statuses"]) == (
        {"200": 5},  # the warm-up's requests are not counted
        {"418": 3},
        {"200": 4},
    )
    assert len(first["latencies_ms"]) == 5 and second["latencies_ms"] == []
    assert marks == ["go", "done"]
    assert children[0].wait(5) == 0  # stdin closed: its loop ended


def test_a_failed_plan_replaces_the_child(server: str, children: list) -> None:
    with procs.reused_load_generator():
        with pytest.raises(RuntimeError, match="before its warm-up ended"):
            procs.run_load(plan(server, None))  # neither requests nor a duration
        assert procs.run_load(plan(server, 2))["statuses"] == {"200": 2}
    assert len(children) == 2
    assert all(child.poll() is not None for child in children)


def test_outside_the_block_each_plan_has_a_child_of_its_own(server: str, children: list) -> None:
    for n in (1, 2):
        assert procs.run_load(plan(server, n))["statuses"] == {"200": n}
    assert len(children) == 2
    assert all(child.poll() is not None for child in children)
