"""Prices arrive in the background: a web process serves before Together's model list
has answered, and the calls it served meanwhile are priced once the list arrives."""

from __future__ import annotations

from decimal import Decimal

import httpx

from sandbox import SandboxConfig
from tests.servers import SluiceServer
from tests.usage.test_recording import CHAT, cost
from tests.waiting import wait_until

HELD = {"asked": 1, "answered": 0, "abandoned": 0, "waiting": 1}


def test_a_model_list_that_never_answers_delays_no_call(tmp_path):
    with SluiceServer(tmp_path, sandbox=SandboxConfig(hold_model_list=True)) as server:
        key = server.issue_key("priced-late")
        with httpx.Client(
            base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as v1:
            answer = v1.post(
                "/chat/completions",
                json={"model": CHAT, "messages": [{"role": "user", "content": "hello there"}]},
            )
            assert answer.status_code == 200, answer.text
            # The process asked for the list when it started and is still waiting for it
            # (not given up on it): the call was served without it.
            assert server.sandbox.stats()["model_lists"] == HELD
            usage = answer.json()["usage"]

            # The list arrives: the call is written at its price (its row waited for it).
            server.sandbox.configure({"hold_model_list": False})
            with httpx.Client(
                base_url=f"{server.url}/api",
                headers={"authorization": f"Bearer {server.admin_token}"},
                timeout=30,
            ) as ops:
                rows = wait_until(
                    lambda: ops.get("/usage", params={"team": "priced-late"}).json(),
                    within=15,
                    every=0.1,
                )
        assert server.sandbox.stats()["model_lists"]["answered"] == 1

    assert [(r["model"], r["requests"], r["total_tokens"]) for r in rows] == [
        (CHAT, 1, usage["total_tokens"])
    ]
    assert Decimal(str(rows[0]["cost"])) == cost(
        CHAT, usage["prompt_tokens"], usage["completion_tokens"]
    )
    assert rows[0]["cost"] != 0


def test_a_drain_writes_calls_whose_price_never_came(tmp_path):
    """SIGTERM while the list still hangs: nothing is lost, written with no price."""
    with SluiceServer(tmp_path, sandbox=SandboxConfig(hold_model_list=True)) as server:
        key = server.issue_key("never-priced")
        with httpx.Client(
            base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as v1:
            answer = v1.post(
                "/chat/completions",
                json={"model": CHAT, "messages": [{"role": "user", "content": "hello"}]},
            )
        assert answer.status_code == 200
        assert server.sandbox.stats()["model_lists"] == HELD
        process = server.processes[0]
        process.terminate()
        assert process.wait(30) == 0
        written = server.python(
            "from limiter.usage.models import UsageRollup\n"
            "print(list(UsageRollup.objects.filter(team_name='never-priced')"
            ".values_list('requests', 'total_tokens', 'input_price', 'cost')))"
        )
    assert (
        written.strip()
        == f"[(1, {answer.json()['usage']['total_tokens']}, None, Decimal('0E-10'))]"
    )
