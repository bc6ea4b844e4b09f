"""Issue 21: the Live view's sharing rows carry names, and a team user sees its own teams'
rows only (another team's share and use name that team)."""

from __future__ import annotations

import pytest

from dashboard import live
from limiter import selectors
from limiter.models import UpstreamAccount
from limiter.protocol import events

pytestmark = pytest.mark.django_db


def row(holder: str, account: str) -> events.SharingSnapshot:
    return {
        "account": account,
        "endpoint": "chat",
        "model": "m",
        "holder": holder,
        "share": 0.6,
        "priority": 2,
        "weight": 1.0,
        "use": 0.4,
        "waiting": 0,
        "state": "lending",
    }


def test_sharing_rows_are_named_and_scoped_to_a_team_users_teams(team, other_team, key):
    account = str(UpstreamAccount.objects.get(is_default=True).pk)
    snapshot: events.LiveSnapshot = {
        "type": events.LIVE_SNAPSHOT,
        "at": 0.0,
        "limiter": {},
        "scopes": [],
        "upstream_headers": {},
        "models": [],
        "history": {},
        "coalescing": [],
        "sharing": [row(f"team:{other_team.pk}", account), row(f"key:{key.pk}", account)],
    }
    view = live.snapshot_enrich(snapshot, selectors.scope_names())
    named = {r["holder"]: r for r in view["sharing"]}
    assert named[f"team:{other_team.pk}"]["team"] == other_team.name
    assert (named[f"key:{key.pk}"]["team"], named[f"key:{key.pk}"]["key_prefix"]) == (
        team.name,
        key.prefix,
    )
    assert named[f"key:{key.pk}"]["account_name"] == "together"
    mine = live.view_scoped(view, live.visible_for(frozenset({team.pk})))
    assert [r["holder"] for r in mine["sharing"]] == [f"key:{key.pk}"]
