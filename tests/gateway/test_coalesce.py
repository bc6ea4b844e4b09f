"""Embeddings coalescing over real HTTP: `manage.py serve` against the sandbox upstream.

Every caller checks its own vectors, which the sandbox derives from each input's text
(sandbox/textgen.py), so a result routed to the wrong caller, or in the wrong order,
fails. The sandbox records every embeddings request it got ([model, inputs]), which
shows how calls were merged.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from sandbox import SandboxConfig
from sandbox.textgen import embedding
from tests.servers import SluiceServer

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


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


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
