"""Embeddings coalescing over real HTTP: `manage.py serve` against the sandbox upstream.

Every caller checks its own vectors, which the sandbox derives from each input's text
(sandbox/textgen.py), so a result routed to the wrong caller, or in the wrong order,
fails. The sandbox records every embeddings request it got ([model, inputs]), which
shows how calls were merged.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sandbox import SandboxConfig
from sandbox.textgen import embedding
from tests.servers import SluiceServer
from tests.waiting import wait_until

EMBED = "/v1/embeddings"
MODEL = "BAAI/bge-base-en-v1.5"
OTHER_MODEL = "togethercomputer/m2-bert-80M-8k-retrieval"
# Long enough that the concurrent callers of one test always meet in one window.
WINDOW_MS = 300


# Keys whose own embeddings limit is out of the way: only the account's ceiling (the
# seeded 300/min paced at 250) paces, once per upstream request.
OPEN = {"requests_per_minute": 100_000, "pace_per_minute": None, "burst": 1000}


def _serve(tmp_path_factory, window_ms: int):
    server = SluiceServer(
        tmp_path_factory.mktemp("coalesce"),
        env={"SLUICE_COALESCE_WINDOW_MS": str(window_ms)},
        sandbox=SandboxConfig(latency_ms=20),
    )
    with server:
        server.make_profile("embed-open", {"embeddings": OPEN})
        # A concurrency cap gives each caller's grant a lease, which the live view counts.
        server.make_profile("embed-capped", {"embeddings": {**OPEN, "max_concurrent": 50}})
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serve(tmp_path_factory, WINDOW_MS)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A window no test waits out: its batches go when full, so a test can act between
    a caller joining and the send."""
    yield from _serve(tmp_path_factory, 600_000)


@pytest.fixture
def sandbox(server):
    server.sandbox.reset()
    server.sandbox.configure({"latency_ms": 20})
    return server.sandbox


@pytest.fixture
def slow_sandbox(slow_server):
    slow_server.sandbox.reset()
    slow_server.sandbox.configure({"latency_ms": 20})
    return slow_server.sandbox


def issue(server, team: str, profile: str = "embed-open") -> str:
    return server.issue_key(team, profile=profile)


def auth(key: str, **headers: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **headers}


def expect_own_answer(response: httpx.Response, texts: list[str], model: str = MODEL) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == model
    assert [item["index"] for item in body["data"]] == list(range(len(texts)))
    assert [item["embedding"] for item in body["data"]] == [embedding(t) for t in texts]
    assert "x-ratelimit-limit-requests" in response.headers


def requests_seen(sandbox) -> list[list]:
    return sandbox.stats()["embeddings_requests"]


async def test_concurrent_callers_of_two_teams_each_get_their_own_vectors(server, sandbox):
    keys = [issue(server, "coalesce-a"), issue(server, "coalesce-b")]
    inputs: list[str | list[str]] = []
    for i in range(40):
        inputs.append(f"text {i} of caller {i}" if i % 3 else [f"a{i}", f"b{i}", f"c{i}"])

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def call(i: int, value: str | list[str]) -> None:
            response = await client.post(
                EMBED,
                json={"model": MODEL, "input": value},
                headers=auth(keys[i % 2], **{"x-request-id": f"caller-{i}"}),
            )
            expect_own_answer(response, [value] if isinstance(value, str) else value)
            assert response.headers["x-request-id"] == f"caller-{i}"

        await asyncio.gather(*(call(i, value) for i, value in enumerate(inputs)))

    seen = requests_seen(sandbox)
    total = sum(1 if isinstance(v, str) else len(v) for v in inputs)
    assert sum(n for _model, n in seen) == total
    assert all(n <= 20 for _model, n in seen)
    assert len(seen) < len(inputs) / 3, seen  # merged: far fewer upstream requests than calls
    stats = sandbox.stats()["embeddings"]
    assert stats["status_429"] == 0


async def test_one_bad_input_among_twenty_fails_only_its_caller(server, sandbox):
    key = issue(server, "coalesce-bad")
    texts = [f"good input {i}" for i in range(20)]
    texts[7] = "x" * 9000  # over the sandbox's 8192 characters: Together's 400

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(EMBED, json={"model": MODEL, "input": t}, headers=auth(key))
                for t in texts
            )
        )

    bad = responses[7]
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "longer than" in error["message"]
    assert "input[0]" in error["message"]  # its own index: the retry carried its input alone
    for i, response in enumerate(responses):
        if i != 7:
            expect_own_answer(response, [texts[i]])
    seen = requests_seen(sandbox)
    assert [MODEL, 20] in seen  # the merged request, refused whole
    assert sandbox.stats()["embeddings"]["other_errors"] == 2  # it, and the bad input alone


async def test_mixed_lists_and_singles_and_a_list_longer_than_n(server, sandbox):
    key = issue(server, "coalesce-mixed")
    values: list[str | list[str]] = [
        "one",
        ["two-a", "two-b"],
        "three",
        [f"long {i}" for i in range(45)],  # alone more than N = 20: split, in order
        ["five-a", "five-b", "five-c", "five-d", "five-e"],
        "six",
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(EMBED, json={"model": MODEL, "input": v}, headers=auth(key))
                for v in values
            )
        )
    for value, response in zip(values, responses, strict=True):
        expect_own_answer(response, [value] if isinstance(value, str) else value)
    seen = requests_seen(sandbox)
    assert all(n <= 20 for _m, n in seen), seen
    assert sum(n for _m, n in seen) == 1 + 2 + 1 + 45 + 5 + 1
    assert len(seen) <= 4, seen  # 20 + 20 alone, the rest merged


async def test_two_models_are_never_merged(server, sandbox):
    key = issue(server, "coalesce-models")
    calls = [(MODEL if i % 2 else OTHER_MODEL, f"model test {i}") for i in range(16)]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(EMBED, json={"model": m, "input": t}, headers=auth(key))
                for m, t in calls
            )
        )
    for (model, text), response in zip(calls, responses, strict=True):
        expect_own_answer(response, [text], model=model)
    seen = requests_seen(sandbox)
    assert sorted(seen) == sorted([[OTHER_MODEL, 8], [MODEL, 8]]), seen


async def test_off_by_header(server, sandbox):
    key = issue(server, "coalesce-header")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    EMBED,
                    json={"model": MODEL, "input": f"alone {i}"},
                    headers=auth(key, **{"x-sluice-coalesce": "false"}),
                )
                for i in range(6)
            )
        )
    for i, response in enumerate(responses):
        expect_own_answer(response, [f"alone {i}"])
    assert requests_seen(sandbox) == [[MODEL, 1]] * 6


async def test_off_by_profile(server, sandbox):
    server.make_profile("no-merge", {"embeddings": OPEN})
    server.python(
        "from limiter.models import LimitProfile\n"
        "LimitProfile.objects.filter(name='no-merge').update(coalesce_embeddings=False)\n"
    )
    key = server.issue_key("coalesce-profile-off", profile="no-merge")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(EMBED, json={"model": MODEL, "input": f"solo {i}"}, headers=auth(key))
                for i in range(6)
            )
        )
    for i, response in enumerate(responses):
        expect_own_answer(response, [f"solo {i}"])
    assert requests_seen(sandbox) == [[MODEL, 1]] * 6


def live(server) -> dict:
    response = httpx.get(
        f"{server.url}/api/live",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=10,
    )
    return response.raise_for_status().json()


def key_leases(server, team: str) -> int:
    snapshot = live(server)["snapshot"] or {"scopes": []}
    return sum(
        s["leases"]
        for s in snapshot["scopes"]
        if s["kind"] == "key" and s.get("team") == team and s["endpoint"] == "embeddings"
    )


async def test_a_caller_cancelled_before_the_send_is_dropped_from_its_batch(
    slow_server, slow_sandbox
):
    # The live view shows when the caller joined (its lease held) and when its
    # cancellation reached Sluice (the lease handed back).
    server, sandbox = slow_server, slow_sandbox
    gone_key = issue(server, "coalesce-gone", "embed-capped")
    stay_key = issue(server, "coalesce-stay")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        gone = asyncio.ensure_future(
            client.post(EMBED, json={"model": MODEL, "input": "never sent"}, headers=auth(gone_key))
        )
        assert await asyncio.to_thread(wait_until, lambda: key_leases(server, "coalesce-gone") == 1)
        gone.cancel()  # closes the connection: Sluice sees the disconnect
        assert await asyncio.to_thread(wait_until, lambda: key_leases(server, "coalesce-gone") == 0)
        # 19 more inputs fill the batch (N = 20 counts the withdrawn input too): it is sent.
        texts = [f"stays {i}" for i in range(19)]
        response = await client.post(
            EMBED, json={"model": MODEL, "input": texts}, headers=auth(stay_key)
        )
    expect_own_answer(response, texts)
    assert requests_seen(sandbox) == [[MODEL, 19]]  # the cancelled caller's input never went


async def test_a_caller_cancelled_after_the_send_has_its_result_discarded(
    slow_server, slow_sandbox
):
    server, sandbox = slow_server, slow_sandbox
    gone_key = issue(server, "coalesce-gone-2", "embed-capped")
    stay_key = issue(server, "coalesce-stay-2")
    sandbox.configure({"latency_ms": 1500})  # the merged request stays in flight a while
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        gone = asyncio.ensure_future(
            client.post(
                EMBED, json={"model": MODEL, "input": "sent then gone"}, headers=auth(gone_key)
            )
        )
        assert await asyncio.to_thread(
            wait_until, lambda: key_leases(server, "coalesce-gone-2") == 1
        )
        texts = [f"stays {i}" for i in range(19)]
        stay = asyncio.ensure_future(
            client.post(EMBED, json={"model": MODEL, "input": texts}, headers=auth(stay_key))
        )
        # The batch is full (1 + 19): it is sent; once the sandbox has it, the first caller goes.
        assert await asyncio.to_thread(wait_until, lambda: requests_seen(sandbox) == [[MODEL, 20]])
        gone.cancel()
        assert await asyncio.to_thread(
            wait_until, lambda: key_leases(server, "coalesce-gone-2") == 0
        )
        response = await stay
    expect_own_answer(response, texts)
    assert requests_seen(sandbox) == [[MODEL, 20]]


async def test_live_view_and_metrics_show_merging(server, sandbox):
    key = issue(server, "coalesce-live")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await asyncio.gather(
            *(
                client.post(EMBED, json={"model": MODEL, "input": f"live {i}"}, headers=auth(key))
                for i in range(10)
            )
        )
        metrics = (await client.get("/metrics")).text
    assert "sluice_coalesce_inputs_per_request_count" in metrics
    assert "sluice_coalesce_wait_seconds_bucket" in metrics

    def merged_row() -> dict | None:
        rows = (live(server)["snapshot"] or {}).get("coalescing", [])
        return next((r for r in rows if r["model"] == MODEL and r["inputs"] >= 10), None)

    assert await asyncio.to_thread(wait_until, lambda: merged_row() is not None)
    row = merged_row()
    assert row is not None
    assert row["inputs_per_request"] > 1
    assert row["longest_wait_ms"] > 0


# --- what a merged request owes each caller: a charge all or nothing, its own wait, its
# own 429 record. Each test routes its teams to an upstream account of its own, so one
# test's full account or held slot is nobody else's.
@pytest.fixture(scope="module")
def gaps_server(tmp_path_factory):
    yield from _serve(tmp_path_factory, WINDOW_MS)


@pytest.fixture
def gaps_sandbox(gaps_server):
    gaps_server.sandbox.reset()
    gaps_server.sandbox.configure({"latency_ms": 20})
    return gaps_server.sandbox


def team_on_account(server, team: str, account: str, account_limits: dict, key_limits: dict) -> str:
    """A key of a new team routed to upstream account `account` (made on first use, its
    embeddings ceiling `account_limits`), its own embeddings row `key_limits`. Keys
    issued after the change make the limiter load it (their configuration is newer)."""
    server.make_profile(f"{account}-ceiling", {"embeddings": account_limits})
    server.make_profile(f"{team}-key", {"embeddings": key_limits})
    server.python(
        "from limiter.models import LimitProfile, Team, UpstreamAccount\n"
        f"account, _ = UpstreamAccount.objects.get_or_create(name={account!r}, "
        f"defaults={{'profile': LimitProfile.objects.get(name={account + '-ceiling'!r})}})\n"
        f"Team.objects.create(name={team!r}, upstream=account, "
        f"profile=LimitProfile.objects.get(name={team + '-key'!r}))\n"
    )
    return server.issue_key(team, profile=f"{team}-key")


def expect_429(response: httpx.Response, codes: set[str]) -> dict:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] in codes, error
    assert int(response.headers["retry-after"]) >= 1
    assert "x-ratelimit-limit-requests" in response.headers  # the caller's own quota
    return error


async def test_a_caller_refused_at_the_account_is_not_charged_on_its_key(gaps_server, gaps_sandbox):
    server = gaps_server
    one_a_minute = {"requests_per_minute": 1, "pace_per_minute": None, "burst": 1}
    filler = team_on_account(server, "charge-filler", "charge-acct", one_a_minute, OPEN)
    # Its key allows one call a minute and a 1 s wait: whatever it is charged shows.
    caller = team_on_account(
        server,
        "charge-caller",
        "charge-acct",
        one_a_minute,
        {**one_a_minute, "max_queue_wait_seconds": 1.0},
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        alone = await client.post(
            EMBED,
            json={"model": MODEL, "input": "fills the account"},
            headers=auth(filler, **{"x-sluice-coalesce": "false"}),
        )
        expect_own_answer(alone, ["fills the account"])
        # The account's next request is a minute away, longer than the caller may wait:
        # its merged request is refused at once, before anything went upstream.
        first = await client.post(
            EMBED, json={"model": MODEL, "input": "refused"}, headers=auth(caller)
        )
        error = expect_429(first, {"account_rate_limited"})
        assert error["scope"] == "account"
        # Charged nothing on its key: its next call is refused by the account again, not
        # by its own one-a-minute limit (which a charge would have used up).
        second = await client.post(
            EMBED, json={"model": MODEL, "input": "refused again"}, headers=auth(caller)
        )
        error = expect_429(second, {"account_rate_limited"})
        assert error["scope"] == "account"
    assert requests_seen(gaps_sandbox) == [[MODEL, 1]]  # only the call alone went


async def test_each_caller_gets_its_own_429_when_its_own_wait_is_over(gaps_server, gaps_sandbox):
    server, sandbox = gaps_server, gaps_sandbox
    one_slot = {**OPEN, "max_concurrent": 1}
    holder = team_on_account(server, "wait-holder", "wait-acct", one_slot, OPEN)
    waits = {"wait-brief": 0.5, "wait-patient": 1.5}
    keys = {
        team: team_on_account(
            server, team, "wait-acct", one_slot, {**OPEN, "max_queue_wait_seconds": wait}
        )
        for team, wait in waits.items()
    }
    sandbox.configure({"latency_ms": 8000})  # the call alone holds the account's one slot
    answered: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def call(team: str) -> httpx.Response:
            response = await client.post(
                EMBED,
                json={"model": MODEL, "input": f"{team} waits"},
                headers=auth(keys[team], **{"x-request-id": f"{team}-1"}),
            )
            answered.append(team)
            return response

        hold = asyncio.ensure_future(
            client.post(
                EMBED,
                json={"model": MODEL, "input": "holds the slot"},
                headers=auth(holder, **{"x-sluice-coalesce": "false"}),
            )
        )
        assert await asyncio.to_thread(wait_until, lambda: requests_seen(sandbox) == [[MODEL, 1]])
        # Both join one merged request, which queues for the slot.
        brief, patient = await asyncio.gather(call("wait-brief"), call("wait-patient"))
        # Each its own 429, the less patient first; then the merged request gives its
        # place up (before the slot frees: the limiter has nothing queued).
        for response in (brief, patient):
            expect_429(response, {"queue_timeout", "concurrency_limited"})
        assert answered == ["wait-brief", "wait-patient"]
        assert brief.headers["x-request-id"] == "wait-brief-1"
        assert await asyncio.to_thread(
            wait_until, lambda: (live(server)["snapshot"] or {})["limiter"]["tickets_queued"] == 0
        )
        assert not hold.done()  # left the queue while the slot was still held (8 s upstream)
        expect_own_answer(await hold, ["holds the slot"])
    assert requests_seen(sandbox) == [[MODEL, 1]]  # the merged request never went


def refusals(server, **filters: str) -> list[dict]:
    response = httpx.get(
        f"{server.url}/api/refusals",
        params={"endpoint": "embeddings", **filters},
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=10,
    )
    return response.raise_for_status().json()["items"]


async def test_a_429_from_together_is_recorded_for_each_caller(gaps_server, gaps_sandbox):
    server, sandbox = gaps_server, gaps_sandbox
    keys = {team: issue(server, team) for team in ("history-a", "history-b")}
    sandbox.configure({"fail_next": [429], "inject_retry_after_s": 0.2})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    EMBED,
                    json={"model": MODEL, "input": f"{team} input"},
                    headers=auth(key, **{"x-request-id": f"{team}-req"}),
                )
                for team, key in keys.items()
            )
        )
    for team, response in zip(keys, responses, strict=True):
        expect_own_answer(response, [f"{team} input"])  # retried as one, after the pause
    assert len(requests_seen(sandbox)) == 2  # refused merged, then sent again merged

    def recorded() -> list[dict]:
        return [r for r in refusals(server, source="upstream") if r["team_name"] in keys]

    assert await asyncio.to_thread(wait_until, lambda: len(recorded()) >= 2)
    rows = sorted(recorded(), key=lambda r: r["team_name"])
    assert [(r["team_name"], r["request_id"], r["reason"]) for r in rows] == [
        ("history-a", "history-a-req", "upstream_rate_limited"),
        ("history-b", "history-b-req", "upstream_rate_limited"),
    ]
    for row in rows:
        assert keys[row["team_name"]].startswith(row["key_prefix"])


async def test_a_callers_own_429_is_recorded_under_its_own_team(gaps_server, gaps_sandbox):
    server = gaps_server
    one_a_minute = {"requests_per_minute": 1, "pace_per_minute": None, "burst": 1}
    filler = team_on_account(server, "record-filler", "record-acct", one_a_minute, OPEN)
    callers = {
        team: team_on_account(
            server, team, "record-acct", one_a_minute, {**OPEN, "max_queue_wait_seconds": 1.0}
        )
        for team in ("record-a", "record-b")
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        alone = await client.post(
            EMBED,
            json={"model": MODEL, "input": "fills"},
            headers=auth(filler, **{"x-sluice-coalesce": "false"}),
        )
        assert alone.status_code == 200
        responses = await asyncio.gather(
            *(
                client.post(
                    EMBED,
                    json={"model": MODEL, "input": team},
                    headers=auth(key, **{"x-request-id": f"{team}-req"}),
                )
                for team, key in callers.items()
            )
        )
    for response in responses:
        expect_429(response, {"account_rate_limited"})

    def recorded() -> list[dict]:
        return [r for r in refusals(server, source="gateway") if r["team_name"] in callers]

    assert await asyncio.to_thread(wait_until, lambda: len(recorded()) >= 2)
    rows = sorted(recorded(), key=lambda r: r["team_name"])
    assert [(r["team_name"], r["request_id"], r["reason"]) for r in rows] == [
        ("record-a", "record-a-req", "account_rate_limited"),
        ("record-b", "record-b-req", "account_rate_limited"),
    ]
