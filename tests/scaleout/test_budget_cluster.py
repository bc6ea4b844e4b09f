"""Budgets across four web processes and one limiter worker over a real Redis and
PostgreSQL: a low budget refuses the next call with `budget_exceeded` on every web
process, and what it lets through beyond its limit stays within the documented bound
(limiter/usage/budgets.py): less than one call's usage, however many calls are in
flight, because each call is reserved at its estimate when admitted and its report
settles it. Counted from the usage rollups after the web processes drained."""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
import pytest

from tests.servers import SluiceServer, stop

pytestmark = pytest.mark.services

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
CLIENTS = 8  # calls in flight at most: each client waits for its answer before the next
LIMIT = 1000  # tokens a day; a call uses 22, so 46 calls reach it
CALLS = 200  # far more than the budget admits: most must be refused
# Its admission estimate, ceil(len("user" + "a b") / 4) + max_tokens = 2 + 20, is what the
# sandbox counts (2 words + 20): no call uses more than its estimate, so the bound is one
# call. And a refusal is final: settling a reservation at its estimate frees nothing.
PROMPT, MAX_TOKENS = "a b", 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, module_redis, module_postgres):
    server = SluiceServer(
        tmp_path_factory.mktemp("budget-cluster"),
        web_processes=4,
        limiter_worker=True,
        env={"REDIS_URL": module_redis.url, "DATABASE_URL": module_postgres},
    )
    with server:
        yield server


async def calls(server: SluiceServer, key: str, total: int) -> list[httpx.Response]:
    """`total` chat calls from CLIENTS clients, round-robin over every web process."""
    targets = itertools.cycle(server.urls)
    jobs = [next(targets) for _ in range(total)]
    answers: list[httpx.Response] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while jobs:
            url = jobs.pop()
            answers.append(
                await client.post(
                    f"{url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {key}"},
                    json={
                        "model": MODEL,
                        "messages": [{"role": "user", "content": PROMPT}],
                        "max_tokens": MAX_TOKENS,
                    },
                )
            )

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    return answers


async def test_a_low_budget_holds_across_four_web_processes(cluster):
    key = cluster.issue_key("budget-spread")
    async with httpx.AsyncClient(
        base_url=f"{cluster.url}/api",
        headers={"authorization": f"Bearer {cluster.admin_token}"},
        timeout=30,
    ) as ops:
        teams = (await ops.get("/teams")).json()
        team = next(t["id"] for t in teams if t["name"] == "budget-spread")
        made = await ops.post(
            f"/teams/{team}/budgets", json={"unit": "tokens", "period": "day", "limit": LIMIT}
        )
        assert made.status_code == 201, made.text

    answers = await calls(cluster, key, CALLS)

    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert {a.status_code for a in refused} == {429}
    assert {a.json()["error"]["code"] for a in refused} == {"budget_exceeded"}
    used = [a.json()["usage"]["total_tokens"] for a in served]
    assert set(used) == {len(PROMPT.split()) + MAX_TOKENS}  # each call: its estimate
    assert sum(used) >= LIMIT, "the budget was never reached"
    # Every refusal came after the spend reached the limit: Together saw only the served.
    assert cluster.sandbox.stats()["chat"]["ok"] == len(served)

    # The next call is refused on every web process, whichever one served the crossing.
    async with httpx.AsyncClient(timeout=30) as client:
        nexts = await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                )
                for url in cluster.urls
            )
        )
    assert [a.status_code for a in nexts] == [429] * 4
    assert [a.json()["error"]["code"] for a in nexts] == ["budget_exceeded"] * 4
    assert all(int(a.headers["retry-after"]) > 0 for a in nexts)

    # The usage rollups after a graceful drain of every web process (SIGTERM flushes them).
    for process in cluster.processes:
        stop(process)
    assert [p.returncode for p in cluster.processes] == [0] * 4
    recorded = json.loads(
        cluster.python(
            "import json\n"
            "from django.db.models import Sum\n"
            "from limiter.usage.models import UsageRollup\n"
            "rows = UsageRollup.objects.filter(team__name='budget-spread', status_class='2xx')\n"
            "print(json.dumps({k: int(v or 0) for k, v in rows.aggregate("
            "requests=Sum('requests'), tokens=Sum('total_tokens')).items()}))"
        )
    )
    # Every served call recorded once, with the tokens the sandbox reported.
    assert recorded == {"requests": len(served), "tokens": sum(used)}
    # The bound: beyond the limit, less than the last admitted call's usage plus what the
    # calls in flight then used beyond their estimates (nothing here): less than one
    # call, with 8 in flight over 4 processes. Without reservations it was the calls in
    # flight times the most one uses (8 x 22 here); four processes each enforcing a
    # budget of their own would let through about four times the limit.
    overshoot = recorded["tokens"] - LIMIT
    assert 0 <= overshoot < max(used), (overshoot, max(used))
