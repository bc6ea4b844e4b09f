"""`{% sharing_panel team %}`: the team page's priority, weight and guaranteed shares, and
the forms that change them (templates/dashboard/_team_sharing.html)."""

from __future__ import annotations

from typing import Any

from django import template
from django.db.models import Q

from dashboard.forms import ShareForm, TeamSharingForm
from limiter.models import Share, Team

register = template.Library()


@register.inclusion_tag("dashboard/_team_sharing.html", takes_context=True)
def sharing_panel(context: template.Context, team: Team, can_write: bool) -> dict[str, Any]:
    rows = Share.objects.filter(Q(team=team) | Q(key__team=team)).select_related("account", "key")
    return {
        "team": team,
        "shares": rows,
        "can_write": can_write,
        "sharing_form": TeamSharingForm(instance=team),
        # A form refused by the share view comes back bound, with its errors.
        "form": context.get("share_form") or ShareForm(team=team),
        "csrf_token": context.get("csrf_token"),
    }
