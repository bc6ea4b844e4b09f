"""SLUICE_UPSTREAM_LEARN=0: the static ceiling of before issue 11, the ramp benchmark's
baseline. Together's headers then never move a model's pace; with learning on (the
default), the same answer paces the model at what Together reported less the margin."""

from __future__ import annotations

import httpx
import pytest

from sandbox import DynamicLimits, SandboxConfig
from tests.servers import SluiceServer

FLUX = "black-forest-labs/FLUX.1-schnell"
CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.mark.parametrize(("learn", "pace"), [("0", 60), ("1", pytest.approx(5.4))])
async def test_learning_off_keeps_the_profiles_pace_whatever_the_headers(tmp_path, learn, pace):
    config = SandboxConfig(
        dynamic=DynamicLimits(floor_per_minute=600, model_caps={"black-forest-labs/FLUX*": 6})
    )
    with SluiceServer(tmp_path, sandbox=config, env={"SLUICE_UPSTREAM_LEARN": learn}) as server:
        auth = {"authorization": f"Bearer {server.issue_key('painter')}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            answer = await client.post(
                "/v1/images/generations", json={"model": FLUX, "prompt": "a sluice"}, headers=auth
            )
            assert answer.status_code == 200, answer.text
            # A call on another model: its ticket reaches the limiter after the report of
            # the first answer's headers (one channel, in order), so that report is applied.
            chat = await client.post(
                "/v1/chat/completions",
                json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}]},
                headers=auth,
            )
            assert chat.status_code == 200, chat.text
            ops = {"authorization": f"Bearer {server.admin_token}"}
            scopes = (await client.get("/api/live", headers=ops)).json()["snapshot"]["scopes"]
        # Together said 6 a minute for the model (0.1 a second in its headers).
        assert server.sandbox.stats()["dynamic"]["models"][FLUX]["rate_per_minute"] == 6
        flux = next(s for s in scopes if s["kind"] == "account" and s["model"] == FLUX)
        assert flux["limit_per_minute"] == pace  # off: the default profile's images row, 60
