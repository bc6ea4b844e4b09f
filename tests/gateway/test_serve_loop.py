"""`manage.py serve` under uvicorn runs uvloop, the loop uvicorn[standard] installs: it ran
asyncio's own loop (started with `asyncio.run`, which ignores uvicorn's loop setting),
whose pure-Python loop and transports cost more CPU a call (docs/measured.md)."""

from __future__ import annotations

import httpx

from tests.servers import SluiceServer


def test_uvicorn_serves_on_uvloop(tmp_path):
    with SluiceServer(tmp_path, env={"SLUICE_SERVER": "uvicorn"}) as server:
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        announced = [line for line in server.log().splitlines() if "Sluice listening" in line]
    assert announced, server.log()
    assert "(uvicorn, uvloop;" in announced[-1]
