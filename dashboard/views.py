"""The dashboard pages: parse the request, call a service or selector, render.

Every page is staff-only: an anonymous visitor is sent to the login page, a logged-in
user who is not staff gets 403.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Concatenate, ParamSpec, TypeVar, cast

from django.contrib import messages
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from dashboard import forms, services
from dashboard.exports import refusal_csv_response
from dashboard.selectors import audit_page, limit_warnings
from limiter import selectors
from limiter.models import ApiKey, EndpointLimit, LimitProfile, Team
from limiter.upstream import client as upstream

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponseBase)


class StaffRequest(HttpRequest):
    """A request `staff_required` let through: its user is a logged-in staff User."""

    user: User


def staff_required(
    view: Callable[Concatenate[StaffRequest, P], R],
) -> Callable[Concatenate[HttpRequest, P], R | HttpResponseRedirect]:
    @wraps(view)
    def wrapper(
        request: HttpRequest, *args: P.args, **kwargs: P.kwargs
    ) -> R | HttpResponseRedirect:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied
        # Checked just above; the types cannot follow a check on request.user to request.
        return view(cast(StaffRequest, request), *args, **kwargs)

    return wrapper


def _apply(request: HttpRequest, change: Callable[[], object], success: str) -> bool:
    """Run a service; report its refusal as a message instead of a 500."""
    try:
        change()
    except services.ServiceError as exc:
        messages.error(request, str(exc))
        return False
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return False
    messages.success(request, success)
    return True


# --- live overview -------------------------------------------------------------------
@staff_required
def overview(request: StaffRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/overview.html",
        {
            "limits": selectors.limit_overview(),
            "upstream_failures": sorted(
                upstream.failures.values(), key=lambda failure: failure.account
            ),
        },
    )


# --- limits --------------------------------------------------------------------------
@staff_required
def limits(request: StaffRequest) -> HttpResponse:
    form = forms.ProfileCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        created: list[LimitProfile] = []
        ok = _apply(
            request,
            lambda: created.append(
                services.profile_create(
                    actor=request.user,
                    name=form.cleaned_data["name"],
                    description=form.cleaned_data["description"],
                    copy_from=form.cleaned_data["copy_from"],
                )
            ),
            f"Profile '{form.cleaned_data['name']}' created.",
        )
        if ok:
            return redirect("dashboard:profile", pk=created[0].pk)
    return render(
        request,
        "dashboard/limits.html",
        {
            "profiles": selectors.profile_list(),
            "accounts": selectors.account_list(),
            "form": form,
        },
    )


@staff_required
def profile(request: StaffRequest, pk: int) -> HttpResponse:
    obj = get_object_or_404(LimitProfile, pk=pk)
    form = forms.ProfileForm(request.POST or None, instance=LimitProfile.objects.get(pk=pk))
    if request.method == "POST" and form.is_valid():
        if _apply(
            request,
            lambda: services.profile_update(
                actor=request.user, profile=obj, data=form.cleaned_data
            ),
            "Profile saved.",
        ):
            return redirect("dashboard:profile", pk=pk)
    ceilings = selectors.ceilings_for_profile(profile=obj)
    rows = [
        {"limit": row, "warnings": limit_warnings(limit=row, ceilings=ceilings)}
        for row in obj.limits.all()
    ]
    return render(
        request,
        "dashboard/profile.html",
        {
            "profile": obj,
            "form": form,
            "rows": rows,
            "teams": obj.teams.order_by("name"),
            "accounts": obj.accounts.order_by("name"),
        },
    )


@staff_required
def limit_edit(request: StaffRequest, pk: int) -> HttpResponse:
    limit = get_object_or_404(EndpointLimit.objects.select_related("profile"), pk=pk)
    # The form edits a copy, so the service sees the old values to audit against.
    form = forms.LimitForm(request.POST or None, instance=EndpointLimit.objects.get(pk=pk))
    if request.method == "POST" and form.is_valid():
        if _apply(
            request,
            lambda: services.limit_update(actor=request.user, limit=limit, data=form.cleaned_data),
            f"Limit {limit} saved; the gateway uses it from the next request.",
        ):
            for warning in limit_warnings(limit=limit):
                messages.warning(request, warning)
            return redirect("dashboard:profile", pk=limit.profile_id)
    return render(
        request,
        "dashboard/limit_edit.html",
        {
            "limit": limit,
            "form": form,
            "warnings": limit_warnings(limit=limit),
        },
    )


# --- teams and keys -----------------------------------------------------------------------
@staff_required
def teams(request: StaffRequest) -> HttpResponse:
    form = forms.TeamCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        name = form.cleaned_data["name"]
        if _apply(
            request,
            lambda: services.team_create(
                actor=request.user, name=name, profile=form.cleaned_data["profile"]
            ),
            f"Team '{name}' created.",
        ):
            return redirect("dashboard:team", pk=Team.objects.get(name=name).pk)
    return render(request, "dashboard/teams.html", {"teams": selectors.team_list(), "form": form})


@staff_required
def team(
    request: StaffRequest,
    pk: int,
    issued: services.IssuedKey | None = None,
    budget_form: forms.BudgetForm | None = None,
) -> HttpResponse:
    obj = get_object_or_404(Team.objects.select_related("profile", "upstream"), pk=pk)
    return render(
        request,
        "dashboard/team.html",
        {
            "team": obj,
            "keys": selectors.key_list(team=obj),
            "key_form": forms.KeyCreateForm(),
            "assign_form": forms.ProfileAssignForm(initial={"profile": obj.profile}),
            "issued": issued,
            "budget_form": budget_form,  # a refused one, shown again with its errors
            "now": timezone.now(),
        },
    )


@require_POST
@staff_required
def team_pause(request: StaffRequest, pk: int) -> HttpResponse:
    obj = get_object_or_404(Team, pk=pk)
    paused = request.POST.get("paused") == "1"
    _apply(
        request,
        lambda: services.team_pause(actor=request.user, team=obj, paused=paused),
        f"Team '{obj.name}' {'paused' if paused else 'resumed'}.",
    )
    # The teams list pauses too and wants to come back to itself.
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        return redirect(back)
    return redirect("dashboard:team", pk=pk)


@require_POST
@staff_required
def team_profile(request: StaffRequest, pk: int) -> HttpResponse:
    obj = get_object_or_404(Team, pk=pk)
    form = forms.ProfileAssignForm(request.POST)
    if form.is_valid():
        _apply(
            request,
            lambda: services.profile_assign(
                actor=request.user, team=obj, profile=form.cleaned_data["profile"]
            ),
            f"Team '{obj.name}' now uses profile '{form.cleaned_data['profile']}'.",
        )
    else:
        messages.error(request, "Choose a profile.")
    return redirect("dashboard:team", pk=pk)


@require_POST
@staff_required
def key_create(request: StaffRequest, pk: int) -> HttpResponse:
    obj = get_object_or_404(Team, pk=pk)
    form = forms.KeyCreateForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, "; ".join(str(e) for errors in form.errors.values() for e in errors)
        )
        return redirect("dashboard:team", pk=pk)
    issued = services.key_create(
        actor=request.user,
        team=obj,
        name=form.cleaned_data["name"],
        profile=form.cleaned_data["profile"],
        expires_at=form.expires_at(),
    )
    # The secret is rendered in this response only: it is never stored, not even in
    # the session, so a reload cannot show it again.
    return team(request, pk, issued=issued)


@require_POST
@staff_required
def key_revoke(request: StaffRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.select_related("team"), pk=pk)
    services.key_revoke(actor=request.user, key=key)
    messages.success(request, f"Key {key.prefix}… revoked; its next request gets 401.")
    return redirect("dashboard:team", pk=key.team_id)


@require_POST
@staff_required
def key_rotate(request: StaffRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.select_related("team"), pk=pk)
    issued = services.key_rotate(actor=request.user, key=key)
    messages.success(request, f"Key {key.prefix}… revoked and replaced by {issued.key.prefix}….")
    return team(request, key.team_id, issued=issued)


# --- 429 history ---------------------------------------------------------------------------
@staff_required
def refusals(request: StaffRequest) -> HttpResponse:
    form = forms.RefusalFilterForm(request.GET or None)
    filters = form.filters()
    page = selectors.refusal_page(filters=filters, after=request.GET.get("after", ""))
    chart_start, chart_end = selectors.refusal_chart_range(filters=filters)
    query = request.GET.copy()
    query.pop("after", None)
    return render(
        request,
        "dashboard/refusals.html",
        {
            "form": form,
            "page": page,
            "query": query.urlencode(),
            "first_page": "after" in request.GET,
            "chart": [
                [int(minute.timestamp()), n]
                for minute, n in selectors.refusal_per_minute(filters=filters)
            ],
            "chart_start": int(chart_start.timestamp()),
            "chart_end": int(chart_end.timestamp()),
            "reasons": selectors.KNOWN_REASONS,
        },
    )


@staff_required
def refusals_csv(request: StaffRequest) -> StreamingHttpResponse:
    filters = forms.RefusalFilterForm(request.GET or None).filters()
    return refusal_csv_response(filters=filters)


# --- audit ---------------------------------------------------------------------------------
@staff_required
def audit(request: StaffRequest) -> HttpResponse:
    page = audit_page(
        after=request.GET.get("after", ""), object_type=request.GET.get("object_type", "")
    )
    return render(
        request,
        "dashboard/audit.html",
        {"page": page, "object_type": request.GET.get("object_type", "")},
    )
