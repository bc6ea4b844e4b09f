"""The alert "team above N% of its limit for M minutes" (condition `team_near_limit:<team>`).

The limiter sees each key scope's use over the last minute (limiter/authority/near.py); when
one has stayed at or above SLUICE_NEAR_LIMIT_FRACTION of its limit for
SLUICE_ALERT_NEAR_LIMIT_MINUTES running, it calls `near_limit_raise` off its event loop.
One alert per team per SLUICE_ALERT_PERIOD, like the rate conditions (services.notify
dedupes across processes); it goes to the organisation's webhooks and the team's own.
"""

from __future__ import annotations

from django.db import close_old_connections
from django.utils import timezone

from limiter.alerts.models import Alert
from limiter.alerts.rates import period_key
from limiter.alerts.services import notify
from limiter.models import ApiKey

TEAM_NEAR_LIMIT = "team_near_limit"  # subject: the team's id


def near_limit_raise(
    *, key_id: str, endpoint: str, model: str, fraction: float, minutes: float
) -> Alert | None:
    """Raise the team's near-limit alert for this period (None: raised already, or the
    key is gone). Sync: the limiter calls it in a thread."""
    close_old_connections()
    key = (
        ApiKey.objects.select_related("team").filter(pk=key_id).first()
        if key_id.isdigit()
        else None
    )
    if key is None:
        return None
    team = key.team
    what = f"{endpoint} ({model})" if model else endpoint
    text = (
        f"Team '{team.name}' has used {fraction:.0%} of its {what} limit for "
        f"{minutes:.0f} minutes (key {key.prefix}…)."
    )
    return notify(
        f"{TEAM_NEAR_LIMIT}:{team.pk}",
        period_key=period_key(timezone.now()),
        text=text,
        team=team,
        fields={
            "key_prefix": key.prefix,
            "endpoint": endpoint,
            "model": model,
            "use_fraction": round(fraction, 3),
            "minutes": round(minutes, 1),
        },
    )
