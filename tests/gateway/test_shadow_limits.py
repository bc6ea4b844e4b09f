"""Shadow limits on real traffic: a key over a shadow row gets every call answered, and
what the row would have refused is in the 429 history marked shadow and in /metrics;
switched to enforced through the ops API (one call), the row refuses from the next call."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from tests.servers import SluiceServer
from tests.waiting import wait_until

CHAT = "/v1/chat/completions"
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with SluiceServer(tmp_path_factory.mktemp("shadow")) as server:
        yield server


def shadow_rows(server: SluiceServer, team: str) -> dict:
    return json.loads(
        server.python(
            "import json\n"
            "from limiter.models import Refusal\n"
            f"rows = Refusal.objects.filter(team_name={team!r})\n"
            "print(json.dumps({'shadow': rows.filter(shadow=True).count(),"
            " 'refused': rows.filter(shadow=False).count(),"
            " 'reasons': sorted(set(rows.values_list('reason', flat=True)))}))"
        )
    )


def ops(server: SluiceServer) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    )


async def send_paced(server: SluiceServer, key: str, calls: int, every: float) -> list[int]:
    """`calls` calls, one every `every` seconds (open loop), each answered in full."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

        async def one(i: int) -> int:
            await asyncio.sleep(max(0.0, started + i * every - time.monotonic()))
            response = await client.post(
                CHAT, json=BODY, headers={"authorization": f"Bearer {key}"}
            )
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(calls))))


def test_a_shadow_row_admits_every_call_records_the_would_be_refusals_then_enforces(server):
    # 10/min shadow on chat, refusing at once when enforced (no queue), burst 1.
    server.make_profile(
        "shadow-10",
        {
            "chat": {
                "requests_per_minute": 10,
                "pace_per_minute": None,
                "burst": 1,
                "queue_depth": 0,
                "max_queue_wait_seconds": 0,
                "shadow": True,
            }
        },
    )
    key = server.issue_key("shadowed", profile="shadow-10")
    # 60 calls at 60/min: 1 a second for a minute.
    statuses = asyncio.run(send_paced(server, key, calls=60, every=1.0))
    assert statuses == [200] * 60  # nobody refused, nobody delayed into a 429
    # A 10/min bucket lets about 10 of those go (one each 6 s); the rest, ~50, it would
    # have refused: recorded as shadow, none as a real refusal.
    rows = wait_until(
        lambda: shadow_rows(server, "shadowed"),
        lambda r: r["shadow"] >= 48,
        within=15,
        what="shadow records written",
    )
    assert 48 <= rows["shadow"] <= 51, rows
    assert rows["refused"] == 0 and rows["reasons"] == ["rate_limited"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    counted = re.search(
        r'sluice_shadow_refused_total\{endpoint="chat",reason="rate_limited",team="shadowed"\} '
        r"(\d+)",
        metrics,
    )
    assert counted is not None and 48 <= float(counted.group(1)) <= 51, metrics[-2000:]
    # Near its limit: the twin admitted ~10 of 10/min, so the row is marked and counted.
    near = re.search(r'sluice_near_limit_scopes\{endpoint="chat",kind="key"\} (\S+)', metrics)
    assert near is not None and float(near.group(1)) >= 1, metrics[-2000:]

    # The Live view's data: the key's row is shadow, with its would-be refusals.
    with ops(server) as api:
        snapshot = api.get("/live").json()["snapshot"]
    row = next(s for s in snapshot["scopes"] if s["kind"] == "key" and s.get("team") == "shadowed")
    assert row["shadow"] is True and row["near_limit"] is True
    assert row["shadow_refused_last_minute"] >= 40 and row["admitted_last_minute"] >= 55

    # The ops API: the row listed as shadow, switched to enforced with one PATCH, audited.
    with ops(server) as api:
        profile = next(p for p in api.get("/profiles").json() if p["name"] == "shadow-10")
        row = next(r for r in profile["limits"] if r["endpoint"] == "chat" and not r["model"])
        assert row["shadow"] is True
        patched = api.patch(f"/limits/{row['id']}", json={"shadow": False})
        assert patched.status_code == 200 and patched.json()["shadow"] is False
        audit = api.get("/audit").json()
    entries = audit["items"] if isinstance(audit, dict) else audit
    assert any(e.get("new_values", {}).get("shadow") is False for e in entries), entries[:3]
    # At once: two calls back to back now meet a 10/min limit, and the second is refused.
    statuses = asyncio.run(send_paced(server, key, calls=2, every=0.0))
    assert 429 in statuses


def test_a_shadow_budget_admits_calls_over_it_and_records_them_until_enforced(server):
    key = server.issue_key("budget-shadowed")
    with ops(server) as api:
        team = next(t for t in api.get("/teams").json() if t["name"] == "budget-shadowed")
        created = api.post(
            f"/teams/{team['id']}/budgets",
            json={"unit": "tokens", "period": "day", "limit": "1", "shadow": True},
        )
        assert created.status_code == 201 and created.json()["shadow"] is True
        budget = created.json()["id"]

    def spent_and_answer() -> int:
        # One at a time: each call's usage is reported before the next is admitted.
        return asyncio.run(send_paced(server, key, calls=1, every=0.0))[0]

    statuses = [spent_and_answer()]
    wait_until(
        lambda: spent_and_answer(),
        lambda status: status == 200 and shadow_rows(server, "budget-shadowed")["shadow"] >= 1,
        within=15,
        what="a call over the shadow budget recorded",
    )
    statuses.append(spent_and_answer())
    assert statuses == [200, 200]
    rows = shadow_rows(server, "budget-shadowed")
    assert rows["refused"] == 0 and rows["reasons"] == ["budget_exceeded"]

    with ops(server) as api:
        patched = api.patch(f"/budgets/{budget}", json={"shadow": False})
        assert patched.status_code == 200 and patched.json()["shadow"] is False
    refused = wait_until(
        spent_and_answer, lambda status: status == 429, within=5, what="the budget enforced"
    )
    assert refused == 429
