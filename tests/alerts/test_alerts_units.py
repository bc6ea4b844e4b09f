"""Alerts without a server: deduplication by the database, rates summed over processes,
who gets which alert (webhooks' own thresholds included), the retry schedule, webhook
secrets kept out of sight, and the addresses a webhook may reach (checked on save and
again, at the address connected to, on send)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError

from limiter.alerts import delivery, destinations, monitor, rates
from limiter.alerts.destinations import MSG_PRIVATE, address_public
from limiter.alerts.models import MSG_UPSTREAM_ON_TEAM, Alert, Attempt, Delivery, Signal, Webhook
from limiter.alerts.payload import alert_payload, redact_url, scrub
from limiter.alerts.services import notify, webhook_create, webhook_set_rates
from limiter.services import team_get_or_create
from tests.alerts.receiver import Receiver

NOW = datetime(2026, 11, 29, 10, 30, 15, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_process(settings):
    """Each test is a new web process: nothing raised yet in its memory."""
    settings.SLUICE_ALERT_TEAM_429_PER_MINUTE = 3
    settings.SLUICE_ALERT_UPSTREAM_503_PER_MINUTE = 2
    settings.SLUICE_ALERT_PERIOD = 3600
    settings.SLUICE_ALERT_RETRY_BACKOFF = 0.5
    settings.SLUICE_ALERT_MAX_ATTEMPTS = 3
    # The tests' hooks.example names resolve nowhere: let them be saved unresolved.
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = True
    rates._raised.clear()
    monitor.monitor.take()
    yield
    rates._raised.clear()


@pytest.fixture
def teams(db):
    return team_get_or_create(name="search")[0], team_get_or_create(name="ads")[0]


def test_one_alert_per_condition_and_period_to_the_organisation_and_the_team(teams):
    search, ads = teams
    org = webhook_create(name="org", url="https://hooks.example/services/T/B/x")
    own = webhook_create(name="search", url="https://hooks.example/search", team=search)
    webhook_create(name="ads", url="https://hooks.example/ads", team=ads)
    off = webhook_create(name="off", url="https://hooks.example/off")
    off.enabled = False
    off.save()

    first = notify("budget_soft:1", period_key="2026-11", text="80% used", team=search)
    again = notify("budget_soft:1", period_key="2026-11", text="80% used", team=search)
    next_month = notify("budget_soft:1", period_key="2026-12", text="80% used", team=search)

    assert first is not None and again is None and next_month is not None
    assert Alert.objects.filter(condition="budget_soft:1").count() == 2
    assert {d.webhook for d in first.deliveries.all()} == {org, own}


def test_a_rate_is_judged_on_the_counts_of_all_processes_together(teams):
    search, _ = teams
    webhook_create(name="org", url="https://hooks.example/org")
    key = (monitor.TEAM_429, str(search.pk))

    # Two processes see 2 and 1 of the team's 429s in the same minute: 3, the threshold.
    assert rates.signals_check(Counter({key: 2}), NOW) == 0
    rates._raised.clear()  # the other process has its own memory
    assert rates.signals_check(Counter({key: 1}), NOW + timedelta(seconds=5)) == 1
    # A third process, later in the hour, sees the same minute over the threshold: the
    # unique constraint, not its memory, stops a second alert.
    rates._raised.clear()
    assert rates.signals_check(Counter({key: 4}), NOW + timedelta(seconds=30)) == 0

    [alert] = Alert.objects.all()
    assert alert.condition == f"team_429:{search.pk}" and alert.team == search
    assert alert.period_key == "2026-11-29T10:00Z"
    assert "Team 'search' got 3 429s" in alert.text
    assert Signal.objects.get(kind=monitor.TEAM_429).count == 7
    assert Delivery.objects.count() == 1


def test_together_503s_and_the_limiter_being_down_are_counted_from_the_request_path(db):
    webhook_create(name="org", url="https://hooks.example/org")
    watch = monitor.monitor
    for status in (200, 429, 503, 503, 500):
        watch.upstream_answered("together", status)
    watch.limiter_unavailable()

    assert rates.signals_check(watch.take(), NOW) == 2  # 503s reached 2; the limiter, 1

    conditions = set(Alert.objects.values_list("condition", flat=True))
    assert conditions == {"upstream_503:together", "limiter_unavailable"}
    assert Signal.objects.get(kind=monitor.UPSTREAM_429).count == 1  # under its threshold
    # 200 and 500 are not watched.
    assert set(Signal.objects.values_list("kind", flat=True)) == {
        monitor.UPSTREAM_429,
        monitor.UPSTREAM_503,
        monitor.LIMITER_UNAVAILABLE,
    }


def test_failed_attempts_back_off_doubling_then_give_up(db):
    webhook = webhook_create(name="org", url="https://hooks.example/org")
    alert = notify("limiter_unavailable", period_key="p", text="down")
    assert alert is not None
    [claimed] = delivery.deliveries_claim()
    assert delivery.deliveries_claim() == []  # claimed: no second sender

    before = claimed.next_attempt_at
    done = delivery.attempt_record(claimed, status=503, error="HTTP 503", duration_ms=3)
    assert done.state == Delivery.PENDING and done.claimed_until is None
    assert done.next_attempt_at - before >= timedelta(seconds=0.5)
    assert [delivery.backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]

    delivery.attempt_record(done, status=None, error="ConnectError", duration_ms=1)
    done = delivery.attempt_record(done, status=500, error="HTTP 500", duration_ms=1)
    assert done.state == Delivery.FAILED
    assert Attempt.objects.filter(delivery__webhook=webhook).count() == 3


def test_the_payload_is_slack_compatible_with_structured_fields(teams):
    search, _ = teams
    alert = notify(
        "budget_hard:4", period_key="2026-11", text="budget used", team=search, fields={"left": 0}
    )
    assert alert is not None
    body = alert_payload(alert)
    assert body["text"] == "[Sluice] budget used"
    fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
    assert fields == {
        "condition": "budget_hard",
        "period": "2026-11",
        "team": "search",
        "left": "0",
    }
    assert body["sluice"]["condition"] == "budget_hard:4"


def test_webhook_urls_are_shown_and_recorded_without_their_secret():
    slack = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    assert redact_url(slack) == "https://hooks.slack.com/…"
    assert redact_url("https://user:pw@example.org:8443/?k=SECRET") == "https://example.org:8443/…"
    error = f"ConnectError: could not reach {slack}"
    assert "XXXXSECRET" not in scrub(error, slack)


def test_a_webhooks_own_thresholds_tell_it_alone_once_each(teams):
    search, ads = teams
    org = webhook_create(name="org", url="https://hooks.example/org")
    eager = webhook_create(
        name="eager", url="https://hooks.example/eager", rates={"team_429_per_minute": 1}
    )
    own = webhook_create(
        name="search",
        url="https://hooks.example/search",
        team=search,
        rates={"team_429_per_minute": 5},
    )
    webhook_create(  # another team's: hears nothing of search's 429s, whatever its number
        name="ads", url="https://hooks.example/ads", team=ads, rates={"team_429_per_minute": 1}
    )
    key = (monitor.TEAM_429, str(search.pk))
    base = f"team_429:{search.pk}"

    def told() -> dict[str, set[str]]:
        return {
            alert.condition: {d.webhook.name for d in alert.deliveries.all()}
            for alert in Alert.objects.all()
        }

    assert rates.signals_check(Counter({key: 1}), NOW) == 1  # eager's 1 reached
    assert told() == {f"{base}@1": {"eager"}}
    assert rates.signals_check(Counter({key: 2}), NOW) == 1  # 3: the global setting
    assert told() == {f"{base}@1": {"eager"}, base: {"org"}}
    rates._raised.clear()  # another process: the database still says "once"
    assert rates.signals_check(Counter({key: 2}), NOW) == 1  # 5: search's own
    assert told() == {f"{base}@1": {"eager"}, base: {"org"}, f"{base}@5": {"search"}}
    assert rates.signals_check(Counter({key: 10}), NOW) == 0
    assert {org, eager, own} == {d.webhook for d in Delivery.objects.all()}
    alert = Alert.objects.get(condition=f"{base}@5")
    assert alert.fields["per_minute_threshold"] == 5 and "got 5 429s" in alert.text


def test_a_teams_webhook_cannot_take_together_thresholds(teams):
    search, _ = teams
    with pytest.raises(ValidationError) as refused:
        webhook_create(
            name="search",
            url="https://hooks.example/search",
            team=search,
            rates={"upstream_503_per_minute": 2},
        )
    assert refused.value.message_dict == {"upstream_503_per_minute": [MSG_UPSTREAM_ON_TEAM]}
    org = webhook_create(name="org", url="https://hooks.example/org")
    webhook_set_rates(webhook=org, rates={"upstream_503_per_minute": 2})
    with pytest.raises(ValidationError):
        webhook_set_rates(webhook=org, rates={"upstream_429_per_minute": 0})
    org.refresh_from_db()
    assert (org.upstream_503_per_minute, org.upstream_429_per_minute) == (2, None)


# --- destinations -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",  # shared (carrier-grade NAT)
        "169.254.169.254",  # the cloud metadata service
        "fd00:ec2::254",  # AWS's metadata service over IPv6
        "fc00::1",
        "fe80::1",
        "fe80::1%eth0",
        "fec0::1",  # site-local
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "not an address",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not address_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert address_public(address)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://[::1]/x", "http://169.254.169.254/", "http://10.0.0.1/"]
)
def test_a_webhook_to_a_non_public_address_is_refused_by_the_service(db, settings, url):
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError) as refused:
        webhook_create(name="inside", url=url)
    assert refused.value.message_dict == {"url": [MSG_PRIVATE]}
    assert not Webhook.objects.exists()


def _one_delivery(url: str) -> Delivery:
    webhook = Webhook.objects.create(name="hook", url=url)  # around the validator
    assert notify("test:1", period_key="p", text="hello", webhooks=[webhook]) is not None
    [claimed] = delivery.deliveries_claim()
    return claimed


async def _deliver(claimed: Delivery) -> Delivery:
    async with httpx.AsyncClient(timeout=5) as client:
        return await delivery.deliver(client, claimed)


async def test_a_name_resolving_inside_at_send_time_is_not_sent_to(
    transactional_db, settings, monkeypatch
):
    # Public when saved, say; now the name resolves to a private address (DNS changed).
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = False
    monkeypatch.setattr(destinations, "resolve", lambda host, port: ["93.184.215.14", "10.0.0.1"])
    claimed = await sync_to_async(_one_delivery)("https://hooks.example/services/T/B/secret")
    done = await _deliver(claimed)  # refused before any connection: no traffic at all
    attempt = await sync_to_async(Attempt.objects.get)(delivery=done)
    assert (attempt.status_code, attempt.error) == (None, "failed")
    assert done.state == Delivery.PENDING


async def test_the_send_connects_to_the_address_it_checked(transactional_db, settings, monkeypatch):
    # hooks.example resolves nowhere; the receiver on 127.0.0.1 gets the POST only if the
    # send connects to the address the check resolved, with the URL's own Host header.
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = True
    seen: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        seen.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(destinations, "resolve", resolve)
    with Receiver() as receiver:
        claimed = await sync_to_async(_one_delivery)(
            f"http://hooks.example:{receiver.port}/pinned-secret"
        )
        done = await _deliver(claimed)
    assert done.state == Delivery.DELIVERED
    assert seen == ["hooks.example"]
    assert receiver.paths == ["/pinned-secret"]
    assert receiver.headers[0]["host"] == f"hooks.example:{receiver.port}"
