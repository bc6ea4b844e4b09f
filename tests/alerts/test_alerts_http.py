"""Alerts against a real `manage.py serve` and the sandbox upstream, delivered over real
HTTP to a webhook receiver on 127.0.0.1: one alert per condition and period however many
times the condition is met, and a delivery retried (with the backoff passed in as a
setting) while the receiver is down. Webhooks are added and tested from the dashboard.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator

import httpx
import pytest

from limiter.alerts.models import MSG_UPSTREAM_ON_TEAM
from tests.alerts.helpers import (
    CHAT_MODEL,
    add_webhook,
    csrf,
    query,
    refused,
    staff_session,
    tighten,
)
from tests.alerts.receiver import Receiver
from tests.servers import SluiceServer, free_port
from tests.waiting import wait_until

SETTINGS = {
    "SLUICE_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver listens on 127.0.0.1
    "SLUICE_ALERT_CHECK_INTERVAL": "0.2",
    "SLUICE_ALERT_RETRY_BACKOFF": "0.3",
    "SLUICE_ALERT_MAX_ATTEMPTS": "20",
    "SLUICE_ALERT_TEAM_429_PER_MINUTE": "3",
    "SLUICE_ALERT_PERIOD": "86400",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[SluiceServer]:
    with SluiceServer(tmp_path_factory.mktemp("alerts"), env=SETTINGS) as server:
        yield server


def test_a_teams_429s_raise_one_alert_however_long_they_go_on(server):
    key = server.issue_key("noisy")
    tighten(server, "noisy")
    team_id = query(server, "select id from limiter_team where name = 'noisy'")[0][0]
    with Receiver() as receiver, staff_session(server) as staff:
        add_webhook(
            staff, server, "noisy-hook", receiver.url("/services/T0/B0/team-secret"), "noisy"
        )

        first = refused(server, key, 8)
        assert first >= 5
        [alert] = receiver.wait_for(1)
        assert alert["sluice"]["condition"] == f"team_429:{team_id}"
        assert "Team 'noisy' got" in alert["text"] and "429s from Sluice" in alert["text"]
        fields = {f["title"]: f["value"] for f in alert["attachments"][0]["fields"]}
        assert fields["team"] == "noisy" and int(fields["count"]) >= 3

        # The condition goes on: every 429 is counted and judged again, and no second alert.
        second = refused(server, key, 8)
        assert second >= 7

        def all_judged() -> bool:
            counted = query(
                server,
                "select coalesce(sum(count), 0) from alerts_signal"
                " where kind = 'team_429' and subject = ?",
                str(team_id),
            )[0][0]
            pending = query(server, "select count(*) from alerts_delivery where state = 'pending'")
            return counted == first + second and pending[0][0] == 0

        wait_until(all_judged, what="every 429 counted and no delivery pending", within=20)
        assert len(receiver.bodies) == 1, receiver.bodies
        assert query(
            server, "select count(*) from alerts_alert where condition = ?", f"team_429:{team_id}"
        ) == [(1,)]
        assert receiver.paths == ["/services/T0/B0/team-secret"]
    assert "team-secret" not in server.log()


def test_a_delivery_is_retried_while_the_receiver_is_down(server):
    server.issue_key("quiet")
    port = free_port()  # nothing listens here yet: connection refused
    url = f"http://127.0.0.1:{port}/hooks/retry-secret?token=also-secret"
    with staff_session(server) as staff:
        webhook = add_webhook(staff, server, "quiet-hook", url, "quiet")
        sent = staff.post(
            f"/alerts/webhooks/{webhook}/test/", data={"csrfmiddlewaretoken": csrf(staff)}
        )
        assert sent.status_code == 302, sent.text
        # The button is a POST with CSRF: without the token it is refused.
        assert staff.post(f"/alerts/webhooks/{webhook}/test/").status_code == 403

        def attempts() -> list[tuple]:
            return query(
                server,
                "select a.status_code, a.error, d.state from alerts_attempt a"
                " join alerts_delivery d on d.id = a.delivery_id"
                " where d.webhook_id = ? order by a.id",
                webhook,
            )

        wait_until(lambda: len(attempts()) >= 2, what="two failed attempts", within=20)
        with Receiver(port) as receiver:
            [alert] = receiver.wait_for(1)
            assert alert["sluice"]["condition"] == f"test:{webhook}"
            wait_until(
                lambda: attempts()[-1][2] == "delivered", what="the delivery recorded", within=20
            )
            log = attempts()
            # "failed", nothing more: the error would map what listens on which port.
            assert all(status is None and error == "failed" for status, error, _ in log[:-1])
            assert log[-1][0] == 200
            assert len(receiver.bodies) == 1

        history = staff.get("/alerts/").text
    assert f"http://127.0.0.1:{port}/…" in history
    assert "delivered" in history and "failed" in history
    assert "ConnectError" not in history
    assert "ConnectError" in server.log()  # the reason, for the operators
    for secret in ("retry-secret", "also-secret"):
        assert secret not in history
        assert secret not in server.log()
        assert all(secret not in error for _, error, _ in log)


def test_a_receivers_error_status_is_not_recorded(server):
    server.issue_key("down")
    with Receiver(status=503) as receiver, staff_session(server) as staff:
        webhook = add_webhook(staff, server, "down-hook", receiver.url("/down-secret"), "down")
        sent = staff.post(
            f"/alerts/webhooks/{webhook}/test/", data={"csrfmiddlewaretoken": csrf(staff)}
        )
        assert sent.status_code == 302, sent.text

        def attempts() -> list[tuple]:
            return query(
                server,
                "select a.status_code, a.error, d.state from alerts_attempt a"
                " join alerts_delivery d on d.id = a.delivery_id where d.webhook_id = ?",
                webhook,
            )

        wait_until(lambda: bool(attempts()), what="the first attempt recorded", within=20)
        history = staff.get("/alerts/").text
        receiver.status = 200  # then it takes the retry
        wait_until(lambda: attempts()[-1][2] == "delivered", what="the retry delivered", within=20)
    assert attempts()[0][:2] == (None, "failed")
    assert "HTTP 503" not in history
    assert "HTTP 503" in server.log()  # the reason, for the operators


def test_budget_thresholds_alert_the_team_once_per_period(server):
    key = server.issue_key("spender")
    with Receiver() as receiver, staff_session(server) as staff:
        add_webhook(staff, server, "spender-hook", receiver.url("/budget-secret"), "spender")
        team = query(server, "select id from limiter_team where name = 'spender'")[0][0]
        api = {"authorization": f"Bearer {server.admin_token}"}
        made = httpx.post(
            f"{server.url}/api/teams/{team}/budgets",
            headers=api,
            json={"unit": "tokens", "period": "day", "limit": 10, "soft_threshold": 0.5},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        budget = made.json()["id"]
        with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as v1:
            body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            assert v1.post(f"{server.url}/v1/chat/completions", json=body).status_code == 200
            codes = [
                v1.post(f"{server.url}/v1/chat/completions", json=body).status_code
                for _ in range(2)  # under the team-429 alert's 3 a minute: only budget alerts
            ]
        assert codes == [429, 429]

        alerts = receiver.wait_for(2)
        by_condition = {a["sluice"]["condition"]: a for a in alerts}
        assert set(by_condition) == {f"budget_soft:{budget}", f"budget_hard:{budget}"}
        hard = by_condition[f"budget_hard:{budget}"]
        assert "daily budget of team 'spender'" in hard["text"]
        assert "reached its limit" in hard["text"]
        assert hard["sluice"]["team"] == "spender"
        wait_until(
            lambda: (
                query(server, "select count(*) from alerts_delivery where state = 'pending'")
                == [(0,)]
            ),
            what="no delivery pending",
            within=20,
        )
        assert len(receiver.bodies) == 2


def test_a_webhooks_own_threshold_is_set_in_the_alerts_page_and_heard_alone(server):
    key = server.issue_key("edgy")
    tighten(server, "edgy")
    team_id = query(server, "select id from limiter_team where name = 'edgy'")[0][0]
    with Receiver() as receiver, staff_session(server) as staff:
        # A team's webhook cannot take Together's thresholds: a form error, nothing saved.
        refused_form = staff.post(
            "/alerts/",
            data={
                "csrfmiddlewaretoken": csrf(staff),
                "name": "edgy-hook",
                "url": receiver.url("/edgy-secret"),
                "team": team_id,
                "upstream_429_per_minute": "5",
            },
        )
        assert refused_form.status_code == 200
        assert MSG_UPSTREAM_ON_TEAM in html.unescape(refused_form.text)
        assert query(server, "select count(*) from alerts_webhook where name = 'edgy-hook'") == [
            (0,)
        ]
        webhook = add_webhook(staff, server, "edgy-hook", receiver.url("/edgy-secret"), "edgy")

        page = staff.get(f"/alerts/webhooks/{webhook}/")
        assert page.status_code == 200 and 'placeholder="3"' in page.text  # the global 3
        assert "edgy-secret" not in page.text
        rates = f"/alerts/webhooks/{webhook}/"
        zero = staff.post(
            rates, data={"csrfmiddlewaretoken": csrf(staff), "team_429_per_minute": 0}
        )
        assert zero.status_code == 200 and "greater than or equal to 1" in zero.text
        saved = staff.post(
            rates, data={"csrfmiddlewaretoken": csrf(staff), "team_429_per_minute": 1}
        )
        assert saved.status_code == 302, saved.text
        assert query(
            server, "select team_429_per_minute from alerts_webhook where id = ?", webhook
        ) == [(1,)]
        assert "team 429s ≥ 1" in staff.get("/alerts/").text
        audited = query(
            server, "select new_values from dashboard_auditentry where action = 'webhook_rates'"
        )
        assert [json.loads(new)["team_429_per_minute"] for (new,) in audited] == [1]

        # One 429, under the global 3 but at this webhook's 1: it alone is told, once.
        assert refused(server, key, 2) == 1
        [alert] = receiver.wait_for(1)
        assert alert["sluice"]["condition"] == f"team_429:{team_id}@1"
        assert refused(server, key, 1) == 1  # 2 in all: still under the global 3

        def all_judged() -> bool:
            counted = query(
                server,
                "select coalesce(sum(count), 0) from alerts_signal"
                " where kind = 'team_429' and subject = ?",
                str(team_id),
            )[0][0]
            pending = query(server, "select count(*) from alerts_delivery where state = 'pending'")
            return counted == 2 and pending == [(0,)]

        wait_until(all_judged, what="every 429 counted and no delivery pending", within=20)
        assert len(receiver.bodies) == 1
        assert query(server, "select condition from alerts_alert where team_id = ?", team_id) == [
            (f"team_429:{team_id}@1",)
        ]
