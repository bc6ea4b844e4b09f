"""The team page's sharing forms (issue 21): the team's priority and weight, and its
guaranteed shares of an upstream account's ceiling (the team's, or one key's). Operators
and admins only (LIMITS_WRITE), CSRF-checked POSTs; a refused share form is shown again on
the team page with its errors (a total past 100% among them). Each change is audited and
reaches the limiter at once (the save broadcasts)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from dashboard import forms, shares, views
from dashboard.access import rule, team_pk
from dashboard.policy import LIMITS_WRITE
from dashboard.views import StaffRequest
from limiter.models import Share, Team


@require_POST
@rule(LIMITS_WRITE, team_from=team_pk())
def team_sharing(request: StaffRequest, pk: int) -> HttpResponse:
    team = get_object_or_404(Team, pk=pk)
    form = forms.TeamSharingForm(request.POST, instance=Team.objects.get(pk=pk))
    if not form.is_valid():
        messages.error(
            request, "; ".join(str(e) for errors in form.errors.values() for e in errors)
        )
        return redirect("dashboard:team", pk=pk)
    shares.team_sharing_set(
        actor=request.user,
        team=team,
        priority=form.cleaned_data["priority"],
        weight=form.cleaned_data["weight"],
    )
    messages.success(request, f"Team '{team.name}': priority and weight saved.")
    return redirect("dashboard:team", pk=pk)


@require_POST
@rule(LIMITS_WRITE, team_from=team_pk())
def share_create(request: StaffRequest, pk: int) -> HttpResponse:
    team = get_object_or_404(Team, pk=pk)
    form = forms.ShareForm(request.POST, team=team)
    if form.is_valid():
        share = form.instance
        try:
            shares.share_create(
                actor=request.user,
                account=share.account,
                team=share.team,
                key=share.key,
                endpoint=share.endpoint,
                model=share.model,
                fraction=share.fraction,
            )
        except ValidationError as exc:  # another share saved meanwhile took the room
            form.add_error(None, exc)
        else:
            messages.success(request, f"Share added: {share}.")
            return redirect("dashboard:team", pk=pk)
    response = views.team(request, pk, share_form=form)
    response.status_code = 400
    return response


@require_POST
@rule(LIMITS_WRITE)
def share_delete(request: StaffRequest, pk: int) -> HttpResponse:
    share = get_object_or_404(Share.objects.select_related("team", "key__team"), pk=pk)
    team = share.team or share.key.team  # type: ignore[union-attr]
    shown = str(share)
    shares.share_delete(actor=request.user, share=share)
    messages.success(request, f"Share removed: {shown}.")
    return redirect("dashboard:team", pk=team.pk)
