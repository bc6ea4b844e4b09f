"""Webhooks go only to public addresses (SLUICE_WEBHOOK_ALLOW_PRIVATE off, the default):
a URL on loopback, a private or link-local network (the cloud metadata address), or any
other non-public address is refused when saved from the Alerts page, and a row pointing
there anyway (written around the form, or a name that resolves elsewhere since) is
refused again when sent. Against a real server; the receiver listens on 127.0.0.1, which
is exactly what must not be reached."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest

from limiter.alerts.destinations import MSG_PRIVATE
from tests.alerts.helpers import csrf, query, staff_session
from tests.alerts.receiver import Receiver
from tests.servers import SluiceServer
from tests.waiting import wait_until

SETTINGS = {
    "SLUICE_WEBHOOK_ALLOW_PRIVATE": "0",
    "SLUICE_ALERT_CHECK_INTERVAL": "0.2",
    "SLUICE_ALERT_RETRY_BACKOFF": "0.2",
    "SLUICE_ALERT_MAX_ATTEMPTS": "2",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[SluiceServer]:
    with SluiceServer(tmp_path_factory.mktemp("destinations"), env=SETTINGS) as server:
        yield server


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[::1]:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://0.0.0.0:{port}/hook",
    ],
)
def test_a_non_public_destination_is_refused_on_the_alerts_page(server, url):
    with Receiver() as receiver, staff_session(server) as staff:
        answer = staff.post(
            "/alerts/",
            data={
                "csrfmiddlewaretoken": csrf(staff),
                "name": "inside",
                "url": url.format(port=receiver.port),
                "team": "",
            },
        )
        assert answer.status_code == 200  # the form again, with the error
        assert MSG_PRIVATE in html.unescape(answer.text)
        assert query(server, "select count(*) from alerts_webhook where name = 'inside'") == [(0,)]
        assert receiver.bodies == []


def test_a_saved_row_pointing_inside_is_refused_when_sent(server):
    with Receiver() as receiver, staff_session(server) as staff:
        # Written around the form, as a row from before this check would be.
        webhook = int(
            server.python(
                "from limiter.alerts.models import Webhook\n"
                "print(Webhook.objects.create(name='legacy',"
                f" url='http://127.0.0.1:{receiver.port}/legacy-secret').pk)"
            ).strip()
        )
        log_before = server.log()
        sent = staff.post(
            f"/alerts/webhooks/{webhook}/test/", data={"csrfmiddlewaretoken": csrf(staff)}
        )
        assert sent.status_code == 302, sent.text

        def attempts() -> list[tuple]:
            return query(
                server,
                "select a.status_code, a.error, d.state from alerts_attempt a"
                " join alerts_delivery d on d.id = a.delivery_id"
                " where d.webhook_id = ? order by a.id",
                webhook,
            )

        wait_until(lambda: len(attempts()) == 2, what="both attempts", within=20)
        wait_until(lambda: attempts()[-1][2] == "failed", what="the delivery given up", within=20)
        assert attempts() == [(None, "failed", "failed"), (None, "failed", "failed")]
        assert receiver.bodies == []  # nothing reached the address inside
        history = staff.get("/alerts/").text
    assert "failed" in history
    logged = server.log()[len(log_before) :]
    assert MSG_PRIVATE in logged and "legacy-secret" not in logged
