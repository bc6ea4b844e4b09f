"""Usage recorded over real HTTP against the sandbox: tokens as the sandbox reported them,
cost at the sandbox's own prices (its model list), per endpoint kind, streams included."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import httpx
import pytest

from sandbox.catalog import model_list
from tests.waiting import wait_until

CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
COMPLETION = "meta-llama/Llama-2-70b-hf"
EMBEDDING = "BAAI/bge-base-en-v1.5"
IMAGE = "black-forest-labs/FLUX.1-schnell"
RERANK = "Salesforce/Llama-Rank-V1"
PRICES = {row["id"]: row["pricing"] for row in model_list([])}


def cost(model: str, prompt: int, completion: int) -> Decimal:
    price = PRICES[model]
    return (
        Decimal(str(price["input"])) * prompt + Decimal(str(price["output"])) * completion
    ) / 1_000_000


def usage_rows(ops: httpx.Client, team: str, **params: object) -> list[dict]:
    answer = ops.get("/usage", params={"team": team, **params})
    answer.raise_for_status()
    return answer.json()


def wait_for_requests(ops: httpx.Client, team: str, count: int, **params: object) -> list[dict]:
    """The rollups are written off the request path (every second): poll the API until
    they show `count` requests, or fail after a deadline."""
    return wait_until(
        lambda: usage_rows(ops, team, **params),
        lambda rows: sum(row["requests"] for row in rows) >= count,
        within=15,
        every=0.1,
    )


@pytest.fixture
def ops(shared_server):
    with httpx.Client(
        base_url=f"{shared_server.url}/api",
        headers={"authorization": f"Bearer {shared_server.admin_token}"},
        timeout=30,
    ) as client:
        yield client


def caller(server, team: str) -> httpx.Client:
    key = server.issue_key(team)
    return httpx.Client(
        base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def test_chat_and_completions_record_the_sandbox_tokens_at_its_prices(shared_server, ops):
    team = "usage-chat"
    expected: dict[str, list[int]] = {CHAT: [0, 0, 0, 0], COMPLETION: [0, 0, 0, 0]}
    with caller(shared_server, team) as v1:
        for words in ("hello there", "a somewhat longer prompt for the model"):
            body = v1.post(
                "/chat/completions",
                json={"model": CHAT, "messages": [{"role": "user", "content": words}]},
            ).json()
            usage = body["usage"]
            expected[CHAT] = [
                a + b
                for a, b in zip(
                    expected[CHAT],
                    [1, usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]],
                    strict=True,
                )
            ]
        # A stream: the usage is in its last chunk.
        with v1.stream(
            "POST",
            "/chat/completions",
            json={"model": CHAT, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ) as stream:
            chunks = [
                json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")
            ]
        usage = chunks[-1]["usage"]
        expected[CHAT] = [
            a + b
            for a, b in zip(
                expected[CHAT],
                [1, usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]],
                strict=True,
            )
        ]
        usage = v1.post("/completions", json={"model": COMPLETION, "prompt": "once upon"}).json()[
            "usage"
        ]
        expected[COMPLETION] = [
            1,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["total_tokens"],
        ]

    rows = {row["model"]: row for row in wait_for_requests(ops, team, 4)}
    for model, (requests, prompt, completion, total) in expected.items():
        row = rows[model]
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
            requests,
            prompt,
            completion,
        )
        assert row["total_tokens"] == total
        assert Decimal(str(row["cost"])) == cost(model, prompt, completion)
        assert row["cost"] != 0


def test_embeddings_images_and_rerank_are_counted(shared_server, ops):
    team = "usage-other"
    inputs = ["first text to embed", "second one"]
    with caller(shared_server, team) as v1:
        assert v1.post("/embeddings", json={"model": EMBEDDING, "input": inputs}).status_code == 200
        assert (
            v1.post(
                "/images/generations", json={"model": IMAGE, "prompt": "a cat", "n": 2}
            ).status_code
            == 200
        )
        reranked = v1.post(
            "/rerank", json={"model": RERANK, "query": "cat", "documents": ["a cat", "a dog"]}
        ).json()

    rows = {row["model"]: row for row in wait_for_requests(ops, team, 3)}
    # Together's embeddings answer reports no usage: inputs counted, tokens estimated
    # (4 characters a token, as admission estimates).
    estimated = math.ceil(sum(len(text) for text in inputs) / 4)
    assert rows[EMBEDDING]["units"] == 2
    assert rows[EMBEDDING]["prompt_tokens"] == estimated
    assert Decimal(str(rows[EMBEDDING]["cost"])) == cost(EMBEDDING, estimated, 0)
    assert rows[IMAGE]["units"] == 2
    assert rows[IMAGE]["total_tokens"] == 0
    prompt = reranked["usage"]["prompt_tokens"]
    assert rows[RERANK]["prompt_tokens"] == prompt
    assert Decimal(str(rows[RERANK]["cost"])) == cost(RERANK, prompt, 0)


def test_a_staff_override_prices_what_follows(shared_server, ops):
    team = "usage-override"
    override = ops.post(
        "/prices", json={"model": RERANK, "override_input": "2.5", "override_output": None}
    )
    assert override.status_code == 200, override.text
    assert Decimal(str(override.json()["input_price"])) == Decimal("2.5")
    assert Decimal(str(override.json()["together_input"])) == Decimal(str(PRICES[RERANK]["input"]))
    try:
        with caller(shared_server, team) as v1:
            reranked = v1.post(
                "/rerank", json={"model": RERANK, "query": "q", "documents": ["a", "b c"]}
            ).json()
        (row,) = wait_for_requests(ops, team, 1)
        prompt = reranked["usage"]["prompt_tokens"]
        assert Decimal(str(row["cost"])) == Decimal("2.5") * prompt / 1_000_000
    finally:
        ops.post("/prices", json={"model": RERANK}).raise_for_status()  # Together's again


def test_a_stream_the_caller_leaves_midway_is_charged_what_it_was_sent(shared_server, ops):
    """Together's usage comes in a stream's last chunk; a caller that goes away before it
    used to be charged 0 tokens. Now: the prompt as estimated at admission, and a
    completion token for each event relayed (Together sends one a token)."""
    team = "usage-cut-stream"
    shared_server.sandbox.configure({"stream_chunk_delay_ms": 100})
    try:
        with (
            caller(shared_server, team) as v1,
            v1.stream(
                "POST",
                "/chat/completions",
                json={
                    "model": CHAT,
                    "stream": True,
                    "max_tokens": 200,
                    "messages": [{"role": "user", "content": "x" * 400}],  # about 100 tokens
                },
            ) as stream,
        ):
            read = 0
            for line in stream.iter_lines():
                read += line.startswith("data: {")
                if read == 3:
                    break  # and leave, long before the last chunk
    finally:
        shared_server.sandbox.configure({"stream_chunk_delay_ms": 0})
    (row,) = wait_for_requests(ops, team, 1)
    assert row["requests"] == 1
    assert row["prompt_tokens"] >= 100  # the messages' text, about 4 characters a token
    assert 3 <= row["completion_tokens"] < 200  # what was relayed, not max_tokens
    assert Decimal(str(row["cost"])) == cost(CHAT, row["prompt_tokens"], row["completion_tokens"])


def test_a_long_stream_left_before_its_last_chunk_is_charged_the_text_relayed(shared_server, ops):
    """Issue 18, item 4: a stream with no max_tokens that the caller leaves just before
    Together's usage chunk used to be charged at most 256 completion tokens (the default
    reserved at admission), whatever it had received. Now it is charged the completion
    text relayed (4 characters a token, or an event a token, whichever is more), in its
    usage record and against its budget alike."""
    team = "usage-cut-long-stream"
    key = shared_server.issue_key(team)
    team_id = next(t["id"] for t in ops.get("/teams").json() if t["name"] == team)
    # Admitted: the prompt's estimate (400) and the default completion (256) are below it;
    # charged what was relayed (over 1,000 tokens), the next call is refused.
    ops.post(
        f"/teams/{team_id}/budgets", json={"unit": "tokens", "period": "day", "limit": 700}
    ).raise_for_status()
    sandbox = shared_server.sandbox
    # The sandbox echoes the prompt's first 8 words, then fills with short words: 1,000
    # events with no max_tokens set, a couple of milliseconds apart.
    sandbox.configure({"stream_chunk_delay_ms": 2, "default_max_tokens": 1000})
    words = " ".join(f"{n}" + "y" * 199 for n in range(8))
    relayed, events = "", 0
    try:
        with (
            httpx.Client(
                base_url=f"{shared_server.url}/v1",
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            ) as v1,
            v1.stream(
                "POST",
                "/chat/completions",
                json={
                    "model": CHAT,
                    "stream": True,
                    "messages": [{"role": "user", "content": words}],
                },
            ) as stream,
        ):
            assert stream.status_code == 200, stream.read()
            for line in stream.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                assert "usage" not in chunk  # left before the last chunk
                relayed += chunk["choices"][0]["delta"]["content"]
                events += 1
                if events == 600:
                    break
    finally:
        sandbox.configure({"stream_chunk_delay_ms": 0, "default_max_tokens": 16})
    assert len(relayed) / 4 > 1000 > 256
    (row,) = wait_for_requests(ops, team, 1)
    assert row["completion_tokens"] >= len(relayed) / 4
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]

    # The budget was charged the same: the next call is refused once the report lands.
    with httpx.Client(
        base_url=f"{shared_server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as v1:
        # The usage report is sent in the background: asked again until it has landed.
        after = wait_until(
            lambda: v1.post(
                "/chat/completions",
                json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}]},
            ),
            lambda answer: answer.status_code == 429,
            within=15,
            every=0.2,
        )
    assert after.status_code == 429, after.text
    error = after.json()["error"]
    assert error["code"] == "budget_exceeded"
