"""The alert counters survive a graceful shutdown: SIGTERM's drain writes and judges the
counts the alerts loop had not checked yet (here it never would: its interval is an
hour), and the alert it raises is delivered once a web process runs again."""

from __future__ import annotations

import signal

from tests.alerts.helpers import add_webhook, query, refused, staff_session, tighten
from tests.alerts.receiver import Receiver
from tests.servers import SluiceServer

SETTINGS = {
    "SLUICE_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver listens on 127.0.0.1
    "SLUICE_ALERT_CHECK_INTERVAL": "3600",
    "SLUICE_ALERT_RETRY_BACKOFF": "0.3",
    "SLUICE_ALERT_TEAM_429_PER_MINUTE": "3",
    "SLUICE_ALERT_PERIOD": "86400",
}


def counted(server: SluiceServer, team_id: int) -> int:
    return query(
        server,
        "select coalesce(sum(count), 0) from alerts_signal where kind = 'team_429' and subject = ?",
        str(team_id),
    )[0][0]


def test_sigterm_drain_writes_and_judges_the_unchecked_alert_counts(tmp_path):
    with SluiceServer(tmp_path, env=SETTINGS) as server, Receiver() as receiver:
        key = server.issue_key("drained")
        tighten(server, "drained")
        team_id = query(server, "select id from limiter_team where name = 'drained'")[0][0]
        with staff_session(server) as staff:
            add_webhook(staff, server, "drain-hook", receiver.url("/drain-secret"), "drained")

        refusals = refused(server, key, 6)
        assert refusals >= 5  # one call a minute: all but (at most) the first refused
        assert counted(server, team_id) == 0  # nothing written: the check is an hour away

        process = server.processes[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0

        assert counted(server, team_id) == refusals
        condition = f"team_429:{team_id}"
        assert query(
            server,
            "select d.state from alerts_alert a join alerts_delivery d on d.alert_id = a.id"
            " where a.condition = ?",
            condition,
        ) == [("pending",)]

        # The queued delivery is not lost either: the next process to start sends it.
        server.restart()
        [alert] = receiver.wait_for(1)
        assert alert["sluice"]["condition"] == condition
        assert len(receiver.bodies) == 1
