"""The limiter unavailable, over real HTTP in the scale-out layout: two web processes and
one `runworker limiter` over a real Redis and PostgreSQL. The worker is killed; both web
processes answer 503 limiter_unavailable and both count it, and the organisation's
webhook receiver gets the alert exactly once (one row, one delivery, one POST)."""

from __future__ import annotations

import httpx
import pytest

from tests.alerts.helpers import CHAT_MODEL, add_webhook, query, staff_session
from tests.alerts.receiver import Receiver
from tests.servers import SluiceServer
from tests.waiting import wait_until

pytestmark = pytest.mark.services

SETTINGS = {
    "SLUICE_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver listens on 127.0.0.1
    "SLUICE_LIMITER_TIMEOUT": "0.5",
    "SLUICE_ALERT_CHECK_INTERVAL": "0.2",
    "SLUICE_ALERT_PERIOD": "86400",
}
CALLS_EACH = 2


def test_the_limiter_down_is_alerted_once_by_two_web_processes(
    tmp_path, private_redis, postgres_database
):
    env = {**SETTINGS, "REDIS_URL": private_redis.url, "DATABASE_URL": postgres_database}
    server = SluiceServer(tmp_path, env=env, web_processes=2, limiter_worker=True)
    with server, Receiver() as receiver:
        key = server.issue_key("steady")
        with staff_session(server) as staff:
            add_webhook(staff, server, "ops", receiver.url("/hooks/limiter-secret"))
        with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            for url in server.urls:  # both serve while the limiter runs
                assert http.post(f"{url}/v1/chat/completions", json=body).status_code == 200

            server.kill_worker()
            codes = [
                http.post(f"{url}/v1/chat/completions", json=body).json()["error"]["code"]
                for url in server.urls
                for _ in range(CALLS_EACH)
            ]
        assert codes == ["limiter_unavailable"] * CALLS_EACH * len(server.urls)

        [alert] = receiver.wait_for(1)
        assert alert["sluice"]["condition"] == "limiter_unavailable"
        assert "The limiter did not answer" in alert["text"]

        def all_judged() -> bool:
            # Every call counted: both processes wrote their counts, and so both judged
            # the condition raised; the database kept one alert and one delivery.
            counted = query(
                server,
                "select coalesce(sum(count), 0) from alerts_signal"
                " where kind = 'limiter_unavailable'",
            )[0][0]
            pending = query(server, "select count(*) from alerts_delivery where state = 'pending'")
            return counted == len(codes) and pending == [(0,)]

        wait_until(
            all_judged, what="both processes' counts written and no delivery pending", within=20
        )
        assert len(receiver.bodies) == 1, receiver.bodies
        assert query(server, "select condition from alerts_alert") == [("limiter_unavailable",)]
        assert query(server, "select state, attempts from alerts_delivery") == [("delivered", 1)]
