"""Limit profiles, accounts, teams and keys for a benchmark deployment.

Runs inside `manage.py shell` against the deployment's own database (see servers.py):
    from bench.provision import main; main('{"account_rpm": 120, ...}')
and prints {"open": secret, "burst": secret, "other": secret} as JSON on its last line.

Three teams, so one deployment serves every kind of measurement:
  open   its own upstream account and key profile, both far above anything the load
         reaches: latency and throughput runs are never throttled by Sluice;
  burst  routed to the default upstream account, whose profile is the ceiling under
         test (paced, burst 1); its key queues up to `key_max_wait` seconds.
  other  a second team like `burst` on the same account: the isolation scenario's
         team B (bench/dynamic.py).
  flood  a runaway script's key on the `open` account: 60 requests a minute, no queue
         (bench/flood.py), so nearly every call of a flood is refused.
"""

from __future__ import annotations

import json
from typing import Any

from limiter.models import EndpointLimit, LimitProfile, Team, UpstreamAccount
from limiter.services import key_issue

UNTHROTTLED = {
    "requests_per_minute": 1_000_000,
    "pace_per_minute": None,
    "burst": 1000,
    "queue_depth": 1000,
}

# A key of 60 a minute that queues nothing: a flood on it is refused outright.
FLOOD = {
    "requests_per_minute": 60,
    "pace_per_minute": None,
    "burst": 1,
    "queue_depth": 0,
    "max_queue_wait_seconds": 0.0,
}


def _profile(name: str, chat: dict[str, Any]) -> LimitProfile:
    """A copy of the default profile with the chat row changed."""
    profile, _ = LimitProfile.objects.get_or_create(name=name)
    profile.limits.all().delete()
    for row in EndpointLimit.objects.filter(profile__name="default"):
        row.pk, row.profile = None, profile
        if row.endpoint == "chat":
            for field, value in chat.items():
                setattr(row, field, value)
        row.save()
    return profile


def _team_key(name: str, profile: LimitProfile, upstream: UpstreamAccount) -> str:
    team, _ = Team.objects.update_or_create(
        name=name, defaults={"profile": profile, "upstream": upstream}
    )
    return key_issue(team=team).secret


def main(options: str) -> None:
    opts = json.loads(options)
    open_profile = _profile("bench-open", UNTHROTTLED)
    open_account, _ = UpstreamAccount.objects.update_or_create(
        name="bench-open", defaults={"profile": open_profile, "is_default": False}
    )
    ceiling = _profile(
        "bench-ceiling",
        {
            "requests_per_minute": opts["account_rpm"],
            "pace_per_minute": opts["account_pace"],
            "burst": 1,
        },
    )
    default_account = UpstreamAccount.objects.get(is_default=True)
    default_account.profile = ceiling
    default_account.save()
    burst_key = _profile(
        "bench-burst", {**UNTHROTTLED, "max_queue_wait_seconds": opts["key_max_wait"]}
    )
    secrets = {
        "open": _team_key("bench-open", open_profile, open_account),
        "burst": _team_key("bench-burst", burst_key, default_account),
        "other": _team_key("bench-other", burst_key, default_account),
        "flood": _team_key("bench-flood", _profile("bench-flood", FLOOD), open_account),
    }
    print(json.dumps(secrets))
