"""Refusals answered by the web process itself, over real HTTP (limiter/protocol/refused.py).

A key without a queue whose bucket has no room is refused by the limiter with a promise
("refused for s"); its calls until then are answered here with the same 429 (body shape,
Retry-After, quota headers, the 429 record) and the limiter is not asked. A limit change
clears the promise at once.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.servers import SluiceServer
from tests.waiting import wait_until

CHAT = "/v1/chat/completions"
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
# One call in 10 s, no queue: another call within them is refused outright (10 s: a
# promise that outlasts any slowness of this machine between the steps of a test).
TIGHT = {
    "chat": {
        "requests_per_minute": 6,
        "pace_per_minute": 6,
        "burst": 1,
        "queue_depth": 0,
        "max_queue_wait_seconds": 0.0,
    }
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with SluiceServer(tmp_path_factory.mktemp("refused-locally")) as server:
        server.make_profile("tight-local", TIGHT)
        yield server


def metric(text: str, name: str, **labels: str) -> float:
    """A counter's value in /metrics text (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def refusals_recorded(server: SluiceServer, **lookups: str) -> int:
    """The 429s in the record that match `lookups` (Django field lookups), as the server's
    own database holds them."""
    where = ", ".join(f"{field}={value!r}" for field, value in lookups.items())
    return int(
        server.python(
            f"from limiter.models import Refusal\nprint(Refusal.objects.filter({where}).count())"
        )
    )


def counts(client: httpx.Client) -> tuple[float, float, float]:
    text = client.get("/metrics").text
    return (
        metric(text, "sluice_refused_total", reason="rate_limited", source="gateway"),
        metric(text, "sluice_refused_locally_total"),
        metric(text, "sluice_admitted_total", endpoint="chat"),
    )


def test_a_flood_is_refused_here_with_the_limiters_429_and_recorded(server):
    key = server.issue_key("flooder", profile="tight-local")
    auth = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post(CHAT, json=BODY, headers=auth).status_code == 200
        refused_before, local_before, admitted_before = counts(client)
        answers = [
            client.post(CHAT, json=BODY, headers={**auth, "x-request-id": f"flood-{i}"})
            for i in range(8)
        ]
        refused, local, admitted = counts(client)

    assert [a.status_code for a in answers] == [429] * 8
    # The first asked the limiter (its refusal carried the promise); the rest did not.
    assert refused - refused_before == 8
    assert local - local_before == 7
    assert admitted == admitted_before
    for answer in answers:
        error = answer.json()["error"]
        assert (error["type"], error["code"], error["scope"]) == (
            "rate_limit_error",
            "rate_limited",
            "key",
        )
        assert error["message"].startswith("Rate limit reached for this key on chat: 6 ")
        headers = answer.headers
        assert headers["x-sluice-limited-by"] == "gateway"
        assert 0 < int(headers["retry-after"]) <= 10
        assert 0 < int(headers["retry-after-ms"]) <= 10_000
        assert headers["x-ratelimit-limit-requests"] == "6"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert re.fullmatch(r"\d(\.\d+)?s", headers["x-ratelimit-reset-requests"])
    # Local refusals count down: none says to wait longer than the first.
    waits = [int(a.headers["retry-after-ms"]) for a in answers]
    assert waits[1:] == sorted(waits[1:], reverse=True) and max(waits[1:]) <= waits[0]

    # Every one is in the 429 record (batched), under its own request id.
    wait_until(
        lambda: refusals_recorded(
            server,
            request_id__startswith="flood-",
            reason="rate_limited",
            source="gateway",
            team_name="flooder",
        ),
        lambda n: n == 8,
        what="8 refusals recorded",
    )


def test_a_raised_limit_clears_the_promise_at_once(server):
    key = server.issue_key("raised", profile="tight-local")
    auth = {"authorization": f"Bearer {key}"}
    admin = {"authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post(CHAT, json=BODY, headers=auth).status_code == 200
        assert client.post(CHAT, json=BODY, headers=auth).status_code == 429  # promised
        _, local_before, _ = counts(client)
        assert client.post(CHAT, json=BODY, headers=auth).status_code == 429  # here
        _, local, _ = counts(client)
        assert local == local_before + 1
        profiles = client.get("/api/profiles", headers=admin).json()
        profile = next(p for p in profiles if p["name"] == "tight-local")
        row = next(r for r in profile["limits"] if r["endpoint"] == "chat" and not r["model"])
        patched = client.patch(
            f"/api/limits/{row['id']}",
            json={
                "requests_per_minute": 6000,
                "pace_per_minute": 6000,
                "burst": 50,
                # a queue: the account's own pace may hold the call a moment
                "queue_depth": 5,
                "max_queue_wait_seconds": 5.0,
            },
            headers=admin,
        )
        assert patched.status_code == 200
        # Within the 10 s the promise had left: the change cleared it, and the limiter
        # (with the raised limit) admits.
        after = client.post(CHAT, json=BODY, headers=auth)
        assert after.status_code == 200
        client.patch(f"/api/limits/{row['id']}", json=TIGHT["chat"], headers=admin)


def test_another_teams_calls_are_not_refused(server):
    flood = server.issue_key("flood-neighbour", profile="tight-local")
    calm = server.issue_key("calm-neighbour")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(4):
            client.post(CHAT, json=BODY, headers={"authorization": f"Bearer {flood}"})
        answers = [
            client.post(CHAT, json=BODY, headers={"authorization": f"Bearer {calm}"})
            for _ in range(3)
        ]
    assert [a.status_code for a in answers] == [200] * 3


def test_metrics_tell_how_late_the_event_loop_ran(server):
    """What a saturated loop costs every call here (limiter/protocol/lag.py): seconds its
    timers ran late, and the probe's ticks, which go on whether the loop is busy or not."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first = client.get("/metrics").text
        wait_until(
            lambda: (
                metric(client.get("/metrics").text, "sluice_event_loop_ticks")
                > metric(first, "sluice_event_loop_ticks") + 5
            ),
        )
        text = client.get("/metrics").text
    assert metric(text, "sluice_event_loop_late_seconds") >= 0.0
    assert "sluice_event_loop_late_seconds " in text
