"""The dashboard pages: parse the request, call a service or selector, render.

Every page declares its rule (dashboard/access.py asks dashboard/policy.py): an anonymous
visitor is sent to the login page, a refused user gets 403, and another team's object 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from dashboard import auth_throttle, forms, live, services
from dashboard.access import SignedInRequest, key_team, rule, team_pk, team_rows_of
from dashboard.exports import USAGE_COUNTS, refusal_csv_response, usage_csv_response
from dashboard.policy import (
    KEYS_WRITE,
    LIMITS_WRITE,
    READ_ALL,
    SHARED_READ,
    TEAM_KEYS_WRITE,
    TEAM_READ,
    TEAMS_WRITE,
    WEBHOOKS_WRITE,
    allows,
    teams_visible,
)
from dashboard.selectors import (
    audit_page,
    limit_warnings,
    team_limits_in_force,
    team_refusals_recent,
    team_usage_this_month,
    teams_accounts,
)
from limiter import selectors
from limiter.alerts import selectors as alert_selectors
from limiter.alerts import services as alert_services
from limiter.alerts.models import Webhook
from limiter.alerts.payload import redact_url
from limiter.models import ApiKey, EndpointLimit, LimitProfile, Team
from limiter.upstream import client as upstream
from limiter.usage import selectors as usage_selectors

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponseBase)


class LoginView(auth_views.LoginView):
    """Django's login with the throttle of forms.LoginForm; a browser that logs in is
    remembered as its account's own (dashboard/auth_throttle.py)."""

    form_class = forms.LoginForm
    redirect_authenticated_user = True

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_valid(form)
        auth_throttle.remember_device(response, form.get_user().get_username())
        return response


# The name the views were written with: a request whose user is signed in.
StaffRequest = SignedInRequest


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


# --- where a sign-in lands ------------------------------------------------------------
@rule(TEAM_READ)
def home(request: StaffRequest) -> HttpResponse:
    """The live overview for an organisation role; a team user's own team page, or a
    chooser when they are on several teams."""
    if allows(request.user, READ_ALL):
        return overview(request)
    teams = list(teams_visible(request.user).order_by("name"))
    if len(teams) == 1:
        return redirect("dashboard:team", pk=teams[0].pk)
    return render(request, "dashboard/my_teams.html", {"teams": teams})


# --- live overview -------------------------------------------------------------------
@rule(SHARED_READ)
def overview(request: StaffRequest) -> HttpResponse:
    """Every row for an organisation role; a team user's teams and the accounts they
    are routed to (the websocket narrows its messages the same way)."""
    visible = live.visible_for(team_rows_of(request))
    return render(
        request,
        "dashboard/overview.html",
        {
            "limits": live.limits_scoped(selectors.limit_overview(), visible),
            "upstream_failures": sorted(
                (
                    failure
                    for failure in upstream.failures.values()
                    if visible is None or failure.account in visible.account_names
                ),
                key=lambda failure: failure.account,
            ),
            "margin_percent": round(settings.SLUICE_UPSTREAM_MARGIN * 100),
            "dedicated": [
                row
                for row in selectors.dedicated_list()
                if visible is None or str(row.account_id) in visible.account_ids
            ],
        },
    )


@rule(LIMITS_WRITE)
@require_POST
def ceiling_reset(request: StaffRequest) -> HttpResponse:
    """Forget what the limiter learned of one model's limit (the live page's Reset)."""
    form = forms.CeilingResetForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(str(e) for errors in form.errors.values() for e in errors))
        return redirect("dashboard:overview")
    data = form.cleaned_data
    confirmed: list[bool] = []
    _apply(
        request,
        lambda: confirmed.append(
            services.learned_ceiling_reset(
                actor=request.user,
                account=data["account"],
                endpoint=data["endpoint"],
                model=data["model"],
            )
        ),
        f"The learned limit of {data['model']} is reset; it is paced at its profile's row.",
    )
    if confirmed and not confirmed[0]:
        messages.warning(request, services.MSG_RESET_UNCONFIRMED)
    return redirect("dashboard:overview")


# --- limits --------------------------------------------------------------------------
@rule(READ_ALL, write=LIMITS_WRITE)
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


@rule(READ_ALL, write=LIMITS_WRITE)
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
    return _profile_page(request, obj, form=form, model_form=forms.ModelLimitForm(profile=obj))


def _profile_page(
    request: StaffRequest,
    obj: LimitProfile,
    *,
    form: forms.ProfileForm,
    model_form: forms.ModelLimitForm,
) -> HttpResponse:
    ceilings = selectors.ceilings_for_profile(profile=obj)
    limits = list(obj.limits.all())
    rows = [
        {"limit": row, "warnings": limit_warnings(limit=row, ceilings=ceilings)}
        for row in limits
        if not row.model
    ]
    model_rows = [
        {"limit": row, "warnings": limit_warnings(limit=row, ceilings=ceilings)}
        for row in limits
        if row.model
    ]
    return render(
        request,
        "dashboard/profile.html",
        {
            "profile": obj,
            "form": form,
            "model_form": model_form,
            "rows": rows,
            "model_rows": model_rows,
            "teams": obj.teams.order_by("name"),
            "accounts": obj.accounts.order_by("name"),
        },
    )


@rule(LIMITS_WRITE)
@require_POST
def model_limit_create(request: StaffRequest, pk: int) -> HttpResponse:
    """A model's own row in the profile (per-model override), effective at once."""
    obj = get_object_or_404(LimitProfile, pk=pk)
    model_form = forms.ModelLimitForm(request.POST, profile=obj)
    if model_form.is_valid():
        data = model_form.cleaned_data
        if _apply(
            request,
            lambda: services.limit_create(
                actor=request.user,
                profile=obj,
                endpoint=data["endpoint"],
                model=data["model"],
                data=model_form.limit_data(),
            ),
            f"Limit for {data['model']} on {data['endpoint']} added; in force at once.",
        ):
            return redirect("dashboard:profile", pk=pk)
    form = forms.ProfileForm(instance=obj)
    return _profile_page(request, obj, form=form, model_form=model_form)


@rule(LIMITS_WRITE)
@require_POST
def model_limit_delete(request: StaffRequest, pk: int) -> HttpResponse:
    """Remove a model's own row: that model falls back to the endpoint's row at once.
    Only per-model rows are deleted here; an endpoint's row is edited, not removed."""
    limit = get_object_or_404(EndpointLimit.objects.exclude(model=""), pk=pk)
    _apply(
        request,
        lambda: services.limit_delete(actor=request.user, limit=limit),
        f"Limit {limit} removed; the endpoint's limit applies to that model again.",
    )
    return redirect("dashboard:profile", pk=limit.profile_id)


@rule(LIMITS_WRITE)
@require_POST
def limit_shadow(request: StaffRequest, pk: int) -> HttpResponse:
    """One click: a profile row to shadow (`shadow=1`: recorded, never refusing) or
    enforced (`shadow=0`), audited and in force from the next call."""
    limit = get_object_or_404(EndpointLimit.objects.select_related("profile"), pk=pk)
    shadow = request.POST.get("shadow") == "1"
    _apply(
        request,
        lambda: services.limit_shadow_set(actor=request.user, limit=limit, shadow=shadow),
        f"Limit {limit} is {'shadow: it records, never refuses' if shadow else 'enforced'} "
        "from the next call.",
    )
    return redirect("dashboard:profile", pk=limit.profile_id)


@rule(LIMITS_WRITE)
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
@rule(READ_ALL, write=TEAMS_WRITE)
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


@rule(TEAM_READ, team_from=team_pk())
def team(
    request: StaffRequest,
    pk: int,
    issued: services.IssuedKey | None = None,
    budget_form: forms.BudgetForm | None = None,
    share_form: forms.ShareForm | None = None,
) -> HttpResponse:
    obj = get_object_or_404(Team.objects.select_related("profile", "upstream"), pk=pk)
    now = timezone.now()
    return render(
        request,
        "dashboard/team.html",
        {
            "team": obj,
            # What its keys may do, what it used this month, its latest 429s with what
            # to do about each; its queues now come from /api/teams/<pk>/now (team.js).
            "limits": team_limits_in_force(team=obj),
            "usage": team_usage_this_month(team=obj, now=now),
            "refusals": team_refusals_recent(team=obj),
            "keys": selectors.key_list(team=obj),
            "key_form": forms.KeyCreateForm(any_profile=allows(request.user, KEYS_WRITE)),
            "assign_form": forms.ProfileAssignForm(initial={"profile": obj.profile}),
            "issued": issued,
            "budget_form": budget_form,  # a refused one, shown again with its errors
            "share_form": share_form,  # likewise
            "now": now,
            # Read-only here: spent as the rollups record it (the limiter's own count,
            # which enforces, is not exposed and may be a flush interval ahead).
            "budgets": usage_selectors.budget_statuses(team_id=obj.pk),
            "usage_zone": settings.SLUICE_USAGE_TIME_ZONE,
        },
    )


@require_POST
@rule(TEAMS_WRITE, team_from=team_pk())
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
@rule(TEAMS_WRITE, team_from=team_pk())
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
@rule(TEAM_KEYS_WRITE, team_from=team_pk())
def key_create(request: StaffRequest, pk: int) -> HttpResponse:
    obj = get_object_or_404(Team, pk=pk)
    form = forms.KeyCreateForm(request.POST, any_profile=allows(request.user, KEYS_WRITE))
    if not form.is_valid():
        messages.error(
            request, "; ".join(str(e) for errors in form.errors.values() for e in errors)
        )
        return redirect("dashboard:team", pk=pk)
    issued = services.key_create(
        actor=request.user,
        team=obj,
        name=form.cleaned_data["name"],
        profile=form.cleaned_data.get("profile"),
        expires_at=form.expires_at(),
    )
    # The secret is rendered in this response only: it is never stored, not even in
    # the session, so a reload cannot show it again.
    return team(request, pk, issued=issued)


@require_POST
@rule(TEAM_KEYS_WRITE, team_from=key_team())
def key_revoke(request: StaffRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.select_related("team"), pk=pk)
    services.key_revoke(actor=request.user, key=key)
    messages.success(request, f"Key {key.prefix}… revoked; its next request gets 401.")
    return redirect("dashboard:team", pk=key.team_id)


@require_POST
@rule(TEAM_KEYS_WRITE, team_from=key_team())
def key_rotate(request: StaffRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.select_related("team"), pk=pk)
    issued = services.key_rotate(actor=request.user, key=key)
    messages.success(request, f"Key {key.prefix}… revoked and replaced by {issued.key.prefix}….")
    return team(request, key.team_id, issued=issued)


# --- 429 history ---------------------------------------------------------------------------
@rule(SHARED_READ)
def refusals(request: StaffRequest) -> HttpResponse:
    form = forms.RefusalFilterForm(request.GET or None, teams=team_rows_of(request))
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


@rule(SHARED_READ)
def refusals_csv(request: StaffRequest) -> StreamingHttpResponse:
    filters = forms.RefusalFilterForm(request.GET or None, teams=team_rows_of(request)).filters()
    return refusal_csv_response(filters=filters)


# --- usage ---------------------------------------------------------------------------------
USAGE_TABLE_ROWS = 500  # the page shows this many; the CSV has every row


@rule(SHARED_READ)
def usage(request: StaffRequest) -> HttpResponse:
    """Tokens and cost per day, team, model, endpoint or key: a chart, a table, a CSV.
    Invalid filters are form errors on the page, with no figures under them. A team user
    sees its teams' rows, and its upstream accounts' totals, which name no team."""
    zone = usage_selectors.usage_zone()
    teams = team_rows_of(request)
    form = forms.UsageFilterForm(
        request.GET, today=timezone.now().astimezone(zone).date(), teams=teams
    )
    context: dict[str, object] = {
        "form": form,
        "zone": zone.key,
        "models": usage_selectors.model_prices().values_list("model", flat=True),
        "counts": USAGE_COUNTS,
    }
    if form.is_valid():
        query = form.query(zone=zone)
        rows = query.rows()
        grouped = usage_selectors.usage_grouped(rows, query.group_by)
        table = []
        for row in grouped[: USAGE_TABLE_ROWS + 1]:
            out = usage_selectors.usage_row_out(row, query.group_by)
            table.append({**out, "groups": [out[name] for name in query.group_by]})
        chart = usage_selectors.usage_chart(
            rows,
            series_by=query.series_by,
            metric=query.metric,
            first_day=query.first_day,
            last_day=query.last_day,
        )
        context.update(
            query=query,
            table=table[:USAGE_TABLE_ROWS],
            more=len(table) > USAGE_TABLE_ROWS,
            total=usage_selectors.usage_sum(rows),
            chart={
                "zone": chart.zone,
                "metric": chart.metric,
                "x": chart.x,
                "series": chart.series,
            },
            csv_query=form.query_data.urlencode(),
        )
        if teams is not None:
            context["account_totals"] = usage_selectors.usage_account_totals(
                since=query.since, until=query.until, accounts=teams_accounts(teams=teams)
            )
    return render(request, "dashboard/usage.html", context)


@rule(SHARED_READ)
def usage_csv(request: StaffRequest) -> HttpResponse | StreamingHttpResponse:
    """The Usage page's rows, all of them, streamed. Invalid filters go back to the page,
    which shows them as form errors."""
    zone = usage_selectors.usage_zone()
    form = forms.UsageFilterForm(
        request.GET, today=timezone.now().astimezone(zone).date(), teams=team_rows_of(request)
    )
    if not form.is_valid():
        return redirect(f"{reverse('dashboard:usage')}?{request.GET.urlencode()}")
    return usage_csv_response(query=form.query(zone=zone))


# --- audit ---------------------------------------------------------------------------------
@rule(READ_ALL)
def audit(request: StaffRequest) -> HttpResponse:
    page = audit_page(
        after=request.GET.get("after", ""), object_type=request.GET.get("object_type", "")
    )
    return render(
        request,
        "dashboard/audit.html",
        {"page": page, "object_type": request.GET.get("object_type", "")},
    )


# --- alerts --------------------------------------------------------------------------------
@rule(SHARED_READ, write=WEBHOOKS_WRITE)
def alerts(request: StaffRequest) -> HttpResponse:
    """The webhooks and the alert history; a team user sees its teams' alerts only, and
    no webhook (their settings are the organisation's)."""
    teams = team_rows_of(request)
    form = forms.WebhookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        services.webhook_add(
            actor=request.user,
            name=data["name"],
            url=data["url"],
            team=data["team"],
            rates=form.rates(),
        )
        messages.success(request, f"Webhook '{data['name']}' added.")
        return redirect("dashboard:alerts")
    return render(
        request,
        "dashboard/alerts.html",
        {
            "form": form,
            "webhooks": alert_selectors.webhook_list() if teams is None else [],
            "alerts": alert_selectors.alert_history(teams=teams),
        },
    )


@rule(WEBHOOKS_WRITE)
def webhook_edit(request: StaffRequest, pk: int) -> HttpResponse:
    """A webhook's own alert thresholds over the global settings."""
    webhook = get_object_or_404(Webhook.objects.select_related("team"), pk=pk)
    # The form validates a copy (a ModelForm writes into its instance while cleaning):
    # the row itself keeps its old values for the audit entry.
    form = forms.WebhookRatesForm(
        request.POST or None, instance=Webhook.objects.select_related("team").get(pk=pk)
    )
    if request.method == "POST" and form.is_valid():
        services.webhook_rates_update(actor=request.user, webhook=webhook, rates=form.rates())
        messages.success(request, f"Alert thresholds of '{webhook.name}' saved.")
        return redirect("dashboard:alerts")
    return render(
        request,
        "dashboard/webhook_edit.html",
        {"form": form, "webhook": webhook, "shown_url": redact_url(webhook.url)},
    )


@require_POST
@rule(WEBHOOKS_WRITE)
def webhook_test(request: StaffRequest, pk: int) -> HttpResponse:
    webhook = get_object_or_404(Webhook, pk=pk)
    alert_services.webhook_test(webhook=webhook)
    messages.success(request, f"Test alert queued for '{webhook.name}'; see the history below.")
    return redirect("dashboard:alerts")


@require_POST
@rule(WEBHOOKS_WRITE)
def webhook_enable(request: StaffRequest, pk: int) -> HttpResponse:
    webhook = get_object_or_404(Webhook, pk=pk)
    enabled = request.POST.get("enabled") == "1"
    services.webhook_enable(actor=request.user, webhook=webhook, enabled=enabled)
    messages.success(request, f"Webhook '{webhook.name}' {'enabled' if enabled else 'disabled'}.")
    return redirect("dashboard:alerts")
