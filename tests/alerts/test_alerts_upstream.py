"""Together's 429s and 503s crossing a rate, over real HTTP: a real `manage.py serve`
against the sandbox made to answer 429s (queued faults) or 503s (the model overloaded),
and the organisation's webhook receiver on 127.0.0.1 gets exactly one alert for the
period however many more come. Every answer Together gave is counted, retries
included: the shared per-minute rows add up to what the sandbox says it answered."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.alerts.helpers import CHAT_MODEL, add_webhook, query, staff_session
from tests.alerts.receiver import Receiver
from tests.servers import SluiceServer
from tests.waiting import wait_until

SETTINGS = {
    "SLUICE_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver listens on 127.0.0.1
    "SLUICE_ALERT_CHECK_INTERVAL": "0.2",
    "SLUICE_ALERT_UPSTREAM_429_PER_MINUTE": "2",
    "SLUICE_ALERT_UPSTREAM_503_PER_MINUTE": "2",
    "SLUICE_ALERT_PERIOD": "86400",
    # Each call is tried 3 times: 3 answers counted, over the threshold. Few on purpose:
    # each injected 429 (it states no limit) halves the model's learned pace, so the next
    # retry waits longer.
    "SLUICE_UPSTREAM_MAX_RETRIES": "2",
}
ATTEMPTS = 3

# How the sandbox is made to answer `status` to the next chat call (each of its
# attempts), and what Sluice then tells the caller.
FAULTS: dict[int, tuple[dict[str, Any], str]] = {
    429: ({"fail_next": [429] * ATTEMPTS, "inject_retry_after_s": 0.05}, "upstream_rate_limited"),
    503: ({"overloaded_models": [CHAT_MODEL]}, "upstream_overloaded"),
}


def call(server: SluiceServer, key: str) -> str:
    """One chat call, refused: its error code."""
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert answer.status_code >= 400, answer.text
    return answer.json()["error"]["code"]


@pytest.mark.parametrize("status", [429, 503])
def test_togethers_errors_over_the_rate_raise_one_alert_for_the_period(tmp_path, status):
    kind = f"upstream_{status}"
    patch, code = FAULTS[status]
    with SluiceServer(tmp_path, env=SETTINGS) as server, Receiver() as receiver:
        key = server.issue_key("caller")
        account = query(server, "select name from limiter_upstreamaccount where is_default")[0][0]
        with staff_session(server) as staff:
            add_webhook(staff, server, "ops", receiver.url("/hooks/upstream-secret"))

        server.sandbox.configure(patch)
        assert call(server, key) == code
        [alert] = receiver.wait_for(1)
        assert alert["sluice"]["condition"] == f"{kind}:{account}"
        assert alert["sluice"]["team"] is None  # the organisation's alert, no team's
        assert f"Together answered {status}" in alert["text"]
        fields = {f["title"]: f["value"] for f in alert["attachments"][0]["fields"]}
        assert fields["account"] == account and int(fields["count"]) >= 2

        # It goes on: every answer is counted and judged again, and no second alert.
        server.sandbox.configure(patch)
        assert call(server, key) == code

        def all_judged() -> bool:
            answered = server.sandbox.stats()["chat"][f"status_{status}"]
            counted = query(
                server,
                "select coalesce(sum(count), 0) from alerts_signal where kind = ? and subject = ?",
                kind,
                account,
            )[0][0]
            pending = query(server, "select count(*) from alerts_delivery where state = 'pending'")
            return counted == answered == 2 * ATTEMPTS and pending == [(0,)]

        wait_until(all_judged, what="every answer counted and no delivery pending", within=20)
        assert len(receiver.bodies) == 1, receiver.bodies
        assert query(server, "select condition from alerts_alert") == [(f"{kind}:{account}",)]
    assert "upstream-secret" not in server.log()
