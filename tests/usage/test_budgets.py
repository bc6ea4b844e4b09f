"""Budgets over real HTTP: a low budget refuses the next call with `budget_exceeded`, a
Retry-After to the period's reset and the 429 recorded; its thresholds are recorded
once; a call within budget goes through."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from tests.waiting import wait_until

CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.fixture
def ops(shared_server):
    with httpx.Client(
        base_url=f"{shared_server.url}/api",
        headers={"authorization": f"Bearer {shared_server.admin_token}"},
        timeout=30,
    ) as client:
        yield client


def team_id(ops: httpx.Client, name: str) -> int:
    return next(t["id"] for t in ops.get("/teams").json() if t["name"] == name)


def chat(v1: httpx.Client) -> httpx.Response:
    return v1.post(
        "/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20},
    )


def test_a_low_token_budget_refuses_the_next_call(shared_server, ops):
    key = shared_server.issue_key("budget-low")
    team = team_id(ops, "budget-low")
    made = ops.post(
        f"/teams/{team}/budgets",
        json={"unit": "tokens", "period": "day", "limit": 10, "soft_threshold": 0.5},
    )
    assert made.status_code == 201, made.text
    budget = made.json()
    assert (Decimal(budget["spent"]), budget["unit"], budget["period"]) == (0, "tokens", "day")

    with httpx.Client(
        base_url=f"{shared_server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as v1:
        first = chat(v1)
        assert first.status_code == 200, first.text  # within budget (nothing spent yet)
        assert first.json()["usage"]["total_tokens"] > 10
        refused = chat(v1)

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["type"] == "rate_limit_error"
    assert "team 'budget-low'" in error["message"] and "budget per day" in error["message"]
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    retry_after = int(refused.headers["retry-after"])
    # To the period's reset (midnight UTC, the default zone), rounded up.
    assert (
        (midnight - now).total_seconds() - 60 < retry_after <= (midnight - now).total_seconds() + 1
    )
    assert midnight.isoformat() in error["message"]

    # Recorded in the 429 history with its reason (written off the request path).
    rows = wait_until(
        lambda: ops.get("/refusals", params={"team": "budget-low"}).json()["items"],
        within=15,
        every=0.1,
    )
    assert [row["reason"] for row in rows] == ["budget_exceeded"]

    # Both thresholds crossed once, by the first call.
    crossings = json.loads(
        shared_server.python(
            "import json\n"
            "from limiter.usage.models import BudgetCrossing\n"
            f"print(json.dumps(sorted(BudgetCrossing.objects.filter(budget_id={budget['id']})"
            ".values_list('level', flat=True))))"
        )
    )
    assert crossings == ["hard", "soft"]

    # Raising the limit lets calls through again at once (a configuration change).
    raised = ops.patch(f"/budgets/{budget['id']}", json={"limit": 100000})
    assert raised.status_code == 200, raised.text
    with httpx.Client(
        base_url=f"{shared_server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as v1:
        assert chat(v1).status_code == 200


def test_a_budget_on_another_model_or_team_does_not_refuse(shared_server, ops):
    key = shared_server.issue_key("budget-other-model")
    team = team_id(ops, "budget-other-model")
    ops.post(
        f"/teams/{team}/budgets",
        json={"unit": "dollars", "period": "month", "limit": "0.000001", "model": "other/model"},
    ).raise_for_status()
    with httpx.Client(
        base_url=f"{shared_server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as v1:
        assert [chat(v1).status_code for _ in range(3)] == [200, 200, 200]


def test_another_teams_key_cannot_be_budgeted(shared_server, ops):
    shared_server.issue_key("budget-owner")
    other_key = shared_server.issue_key("budget-stranger")
    stranger = team_id(ops, "budget-stranger")
    key_id = ops.get(f"/teams/{stranger}/keys").json()[0]["id"]
    owner = team_id(ops, "budget-owner")
    answer = ops.post(
        f"/teams/{owner}/budgets",
        json={"unit": "tokens", "period": "day", "limit": 1, "key_id": key_id},
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
    assert other_key


def test_a_call_in_flight_holds_the_budget_until_its_usage_settles_it(shared_server, ops):
    """Reserve at admission, settle on report, over real HTTP: a stream whose estimate
    (a long one-word prompt, ~200 tokens at 4 characters a token) fills the budget
    refuses the next call while it runs, before it has used anything; once it ends, it
    is charged what the sandbox counted (4 tokens: one word and three), and calls go
    through again."""
    key = shared_server.issue_key("budget-inflight")
    team = team_id(ops, "budget-inflight")
    ops.post(
        f"/teams/{team}/budgets", json={"unit": "tokens", "period": "day", "limit": 150}
    ).raise_for_status()
    sandbox = shared_server.sandbox
    delay = httpx.get(f"{sandbox.url}/sandbox/config").json()["stream_chunk_delay_ms"]
    # Each word a second apart: the stream stays in flight for seconds after its first
    # chunk, while the refusal below takes milliseconds.
    sandbox.configure({"stream_chunk_delay_ms": 1000})
    try:
        with httpx.Client(
            base_url=f"{shared_server.url}/v1",
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        ) as v1:
            # Estimated at (800 + len("user")) / 4 + 3 = 204 tokens; counted as 1 + 3.
            long_prompt = {"role": "user", "content": "x" * 800}
            with v1.stream(
                "POST",
                "/chat/completions",
                json={"model": CHAT, "messages": [long_prompt], "max_tokens": 3, "stream": True},
            ) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))  # admitted
                held = v1.post(
                    "/chat/completions",
                    json={
                        "model": CHAT,
                        "messages": [{"role": "user", "content": "a b"}],
                        "max_tokens": 5,
                    },
                )
                assert held.status_code == 429, held.text
                error = held.json()["error"]
                assert error["code"] == "budget_exceeded"
                assert "has used 0 (and 204 held by its calls in flight)" in error["message"]
                rest = [line for line in lines if line.startswith("data: {")]
            usage = json.loads(rest[-1].removeprefix("data: "))["usage"]
            assert usage["total_tokens"] == 4  # what the sandbox counted: 1 word + 3

            # Its report settles the reservation at those 4 tokens. It leaves its web
            # process when the stream has ended (fire and forget), so the next call may
            # beat it to the limiter and still find the estimate held: asked again until
            # the report has landed. Settled at the estimate instead (204 of 150), no
            # call would ever pass.
            def answered(answer: httpx.Response) -> bool:
                if answer.status_code != 200:
                    assert answer.json()["error"]["code"] == "budget_exceeded"
                return answer.status_code == 200

            after = wait_until(lambda: chat(v1), answered, within=15, every=0.1)
            assert after.status_code == 200, after.text
    finally:
        sandbox.configure({"stream_chunk_delay_ms": delay})
