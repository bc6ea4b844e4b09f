"""Services for sharing an upstream account's ceiling (issue 21): guaranteed shares, a
team's priority and weight, a key's own priority. Each change is validated (shares on one
scope add up to at most 100%: limiter.models.Share.clean), audited, and reaches the
limiter at once (the save broadcasts the configuration change, limiter/signals.py)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from dashboard.services import _update, _values, audit_record
from limiter.models import ApiKey, Share, Team, UpstreamAccount

SHARE_FIELDS = ("account", "team", "key", "endpoint", "model", "fraction")


@transaction.atomic
def share_create(
    *,
    actor: User | None,
    account: UpstreamAccount,
    endpoint: str,
    fraction: float,
    team: Team | None = None,
    key: ApiKey | None = None,
    model: str = "",
) -> Share:
    # One writer at a time per account: two shares saved at once cannot both pass the
    # 100% check against a total that has neither.
    UpstreamAccount.objects.select_for_update().filter(pk=account.pk).first()
    share = Share(
        account=account, team=team, key=key, endpoint=endpoint, model=model, fraction=fraction
    )
    share.full_clean()
    share.save()
    audit_record(actor=actor, action="create", obj=share, new=_values(share, SHARE_FIELDS))
    return share


@transaction.atomic
def share_update(*, actor: User | None, share: Share, fraction: float) -> Share:
    UpstreamAccount.objects.select_for_update().filter(pk=share.account_id).first()
    _update(actor=actor, obj=share, data={"fraction": fraction}, action="update")
    return share


@transaction.atomic
def share_delete(*, actor: User | None, share: Share) -> None:
    audit_record(actor=actor, action="delete", obj=share, old=_values(share, SHARE_FIELDS))
    share.delete()


@transaction.atomic
def team_sharing_set(
    *, actor: User | None, team: Team, priority: str | None = None, weight: float | None = None
) -> Team:
    """A team's priority and weight (None: unchanged)."""
    data: dict[str, object] = {}
    if priority is not None:
        data["priority"] = priority
    if weight is not None:
        data["weight"] = weight
    _update(actor=actor, obj=team, data=data, action="update")
    return team


@transaction.atomic
def key_priority_set(*, actor: User | None, key: ApiKey, priority: str) -> ApiKey:
    """A key's own priority ("": its team's)."""
    _update(actor=actor, obj=key, data={"priority": priority}, action="update")
    return key
