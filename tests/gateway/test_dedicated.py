"""Issue 23, dedicated endpoints, over real HTTP: the limiter learns from the sandbox's
endpoint list which model the account serves on a dedicated endpoint; calls to it are not
held to the account's per-model ceiling, but still to the key's own limits."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sandbox import DynamicLimits, SandboxConfig
from tests.servers import SluiceServer
from tests.waiting import wait_until

DEDICATED = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
SERVERLESS = "Qwen/Qwen2.5-7B-Instruct-Turbo"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Together's serverless limits: 60 a minute (1 a second) for every model.
    config = SandboxConfig(dynamic=DynamicLimits(floor_per_minute=60, cap_per_minute=60))
    with SluiceServer(
        tmp_path_factory.mktemp("dedicated"),
        sandbox=config,
        env={"SLUICE_DEDICATED_POLL_SECONDS": "0.5"},
    ) as server:
        made = httpx.post(
            f"{server.sandbox.v1_url}/endpoints",
            json={"model": DEDICATED, "hardware": "1x_nvidia_h100_80gb_sxm"},
            headers={"authorization": "Bearer org"},
        )
        assert made.status_code == 200, made.text
        server.make_profile(
            "tight",
            {
                "chat": {
                    "requests_per_minute": 2,
                    "pace_per_minute": None,
                    "burst": 2,
                    "queue_depth": 0,
                }
            },
        )
        yield server


def dedicated_rows(server: SluiceServer) -> str:
    return server.python(
        "from limiter.models import DedicatedModel\n"
        "print(sorted((r.model, r.by_hand) for r in DedicatedModel.objects.all()))"
    ).strip()


def ceilings(server: SluiceServer) -> dict[str, dict]:
    with httpx.Client(
        base_url=f"{server.url}/api", headers={"authorization": f"Bearer {server.admin_token}"}
    ) as api:
        models = api.get("/ceilings").raise_for_status().json()["models"]
    return {m["model"]: m for m in models}


async def chat(server: SluiceServer, key: str, model: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {key}"},
                )
                for _ in range(n)
            )
        )


async def test_a_dedicated_model_is_not_held_to_the_accounts_ceiling(server):
    wait_until(
        lambda: dedicated_rows(server),
        lambda rows: rows == f"[({DEDICATED!r}, False)]",
        within=20,
        what="the limiter's poll to find the dedicated endpoint",
    )
    key = server.issue_key("dedicated-users")
    # A model served serverless: the account's ceiling for it is learned (60 a minute).
    assert [a.status_code for a in await chat(server, key, SERVERLESS, 1)] == [200]
    wait_until(lambda: ceilings(server), lambda c: SERVERLESS in c, what="the ceiling")
    assert ceilings(server)[SERVERLESS]["learned_per_minute"] == pytest.approx(60)

    answers = await chat(server, key, DEDICATED, 5)

    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    # No per-model ceiling was made for it: only the key's scope charged the calls.
    assert DEDICATED not in ceilings(server)
    # Together did not limit it either (a dedicated endpoint has no rate limit).
    assert DEDICATED not in server.sandbox.stats()["dynamic"]["models"]


async def test_a_dedicated_model_is_still_held_to_the_keys_limits(server):
    wait_until(lambda: dedicated_rows(server), lambda rows: DEDICATED in rows, within=20)
    key = server.issue_key("tight-team", profile="tight")
    answers = [(await chat(server, key, DEDICATED, 1))[0] for _ in range(3)]

    assert [a.status_code for a in answers[:2]] == [200, 200]
    refused = answers[2]
    assert refused.status_code == 429, refused.text
    assert refused.headers["x-sluice-limited-by"] == "gateway"
    assert refused.json()["error"]["code"] in ("rate_limited", "queue_full")


def test_the_live_page_says_which_models_are_dedicated(server):
    wait_until(lambda: dedicated_rows(server), lambda rows: DEDICATED in rows, within=20)
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get("/login/")
        token = page.cookies.get("csrftoken")
        browser.post(
            "/login/",
            data={
                "username": server.admin_username,
                "password": server.admin_password,
                "csrfmiddlewaretoken": token,
            },
            headers={"referer": f"{server.url}/login/"},
        )
        live = browser.get("/live/")
    assert live.status_code == 200
    assert f'data-model="{DEDICATED}"' in live.text
    assert "Together's endpoint list" in live.text
