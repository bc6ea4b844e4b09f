"""SIGTERM drains: requests in flight or queued are answered, not dropped, and the process
exits 0, under either server (under uvicorn 0.29 and later it died of the signal, -15,
without the drain: its own signal capture replaced serve's)."""

from __future__ import annotations

import signal
import threading

import httpx
import pytest

from sandbox import SandboxConfig
from tests.servers import SluiceServer

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.mark.parametrize("server_name", ["uvicorn", "daphne"])
def test_sigterm_answers_in_flight_and_queued_requests(tmp_path, server_name):
    env = {"SLUICE_SERVER": server_name}
    with SluiceServer(tmp_path, env=env, sandbox=SandboxConfig(latency_ms=1500)) as server:
        server.make_profile(
            "slow",
            {
                "chat": {
                    "requests_per_minute": 60,
                    "pace_per_minute": None,
                    "burst": 1,
                    "queue_depth": 5,
                    "max_queue_wait_seconds": 10,
                }
            },
        )
        key = server.issue_key("draining", profile="slow")
        results: list[int] = []

        def call() -> None:
            response = httpx.post(
                f"{server.url}/v1/chat/completions",
                timeout=30,
                headers={"authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
            results.append(response.status_code)

        callers = [
            threading.Thread(target=call) for _ in range(2)
        ]  # one in flight, one queued behind it
        for caller in callers:
            caller.start()
        assert server.sandbox.stats()["chat"]["requests"] == 0
        threading.Event().wait(0.7)  # both have arrived: the first is upstream, the second queued
        process = server.processes[0]
        process.send_signal(signal.SIGTERM)
        threading.Event().wait(0.3)
        try:
            httpx.get(f"{server.url}/healthz", timeout=2)
            refused_new = False
        except httpx.TransportError:
            refused_new = True
        for caller in callers:
            caller.join(30)
        assert results == [200, 200]
        assert refused_new, "the draining server still accepted new connections"
        assert process.wait(20) == 0
