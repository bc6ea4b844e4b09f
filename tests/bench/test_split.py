"""bench/split.py's arithmetic and its open-loop cell, and the bare forwarder it measures,
without servers (the whole part runs only when asked: `python -m bench --only split`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bench import split
from bench.floor import bare
from bench.latency import Target


def cell(cpu_ms: float, rps: float = 100.0) -> split.Cell:
    return split.Cell(cpu_ms=cpu_ms, rps=rps, failed=0, p50_ms=25.0)


def test_ratio_is_the_median_of_each_rounds_ratio_to_the_first_deployment() -> None:
    comparison = split.Comparison(
        "closed",
        {
            "1 process": [cell(1.0), cell(2.0), cell(1.0)],
            "4 processes": [cell(1.5), cell(2.2), cell(1.2)],
        },
    )
    # Rounds' ratios 1.5, 1.1, 1.2: their median, not the medians' ratio (1.5 / 1.0).
    assert comparison.ratio("4 processes") == pytest.approx(1.2)
    assert comparison.ratio("1 process") == 1.0
    table = split.markdown([comparison])
    assert "| closed | 4 processes | 1.50 | 1.20 | 100 | 25.0 | 0 |" in table


def test_open_cell_spreads_the_rate_over_the_processes_and_counts_only_answered_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[dict[str, Any]] = []

    def fake_openloop(streams: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        sent.extend(streams)
        answers = [200] * 19 + [429]
        return {"requests": [{"status": s, "latency_ms": 30.0} for s in answers]}

    spent = iter([10.0, 10.038])  # CPU seconds before and after: 38 ms
    monkeypatch.setattr(split, "run_openloop", fake_openloop)
    monkeypatch.setattr(split, "cpu_seconds", lambda pids: next(spent))
    target = Target("four", [f"http://127.0.0.1:{p}/v1" for p in range(4)], "k", lambda: [1])

    result = split.open_cell(target, rate=20.0, duration=1.0)

    assert [s["url"] for s in sent] == [
        f"http://127.0.0.1:{p}/v1/chat/completions" for p in range(4)
    ]
    assert [s["rate"] for s in sent] == [5.0] * 4
    assert result.cpu_ms == pytest.approx(2.0)  # 38 ms over the 19 answered calls
    assert (result.rps, result.failed) == (19.0, 1)


class Upstream:
    """Stands in for the forwarder's aiohttp session: records each POST, answers 201."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []
        self.status = 201
        self.headers = {"content-type": "application/json"}

    def post(self, url: str, *, data: bytes, headers: dict[str, str]) -> Upstream:
        self.posts.append((url, data, headers))
        return self

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        return b'{"id": "x"}'


def test_bare_forwarder_relays_the_body_and_the_key_and_returns_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = Upstream()
    monkeypatch.setattr(bare, "session", lambda: upstream)
    body = json.dumps({"model": "m"}).encode()
    chunks = iter([{"body": body[:5], "more_body": True}, {"body": body[5:]}])
    answer: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(chunks)

    async def send(message: Any) -> None:
        answer.append(message)

    scope = {"type": "http", "headers": [(b"authorization", b"Bearer k")]}
    asyncio.run(bare.application(scope, receive, send))

    [(url, data, headers)] = upstream.posts
    assert (url, data, headers["authorization"]) == (bare.UPSTREAM, body, "Bearer k")
    assert answer[0]["status"] == 201
    assert json.loads(answer[1]["body"]) == {"id": "x"}


def test_only_split_prints_the_command_the_machine_and_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main

    asked: list[split.SplitSize] = []

    def fake_run(tmp: object, size: split.SplitSize, **kwargs: object) -> list[split.Comparison]:
        asked.append(size)
        return [split.Comparison("open loop, 100 calls/s", {"1 process": [cell(2.0)]})]

    monkeypatch.setattr(split, "run", fake_run)
    main(["--only", "split", "--duration", "2"])

    out = capsys.readouterr().out
    assert asked == [split.SplitSize(rounds=6, duration=2.0, warmup=40, rates=(100.0, 150.0))]
    assert "Command: `python -m bench --only split --duration 2`" in out
    assert "Load average" in out
    assert "| open loop, 100 calls/s | 1 process | 2.00 | 1.00 | 100 | 25.0 | 0 |" in out
