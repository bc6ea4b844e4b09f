"""The ops API's usage router: usage totals, model prices (and admins' overrides), and
each team's budgets with their spend this period. Mounted on the one NinjaAPI
(dashboard/api.py), with its auth, rules and error shape."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Query, Router, Status

from dashboard import services as dashboard_services
from dashboard.access import api_rule, owner_team, team_pk, team_rows_of
from dashboard.policy import BUDGETS_WRITE, PRICES_WRITE, READ_ALL, SHARED_READ, TEAM_READ
from dashboard.schemas import ErrorOut
from dashboard.usage_schemas import (
    BudgetIn,
    BudgetOut,
    BudgetPatchIn,
    PriceOut,
    PriceOverrideIn,
    UsageFilterIn,
    UsageTotalOut,
)
from limiter.models import ApiKey, Team
from limiter.usage import prices, selectors, services
from limiter.usage.models import Budget

DEFAULT_RANGE = timedelta(days=30)

ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}

router = Router(tags=["usage and budgets"])


@router.get("/usage", response={200: list[UsageTotalOut], **ERRORS})
@api_rule(SHARED_READ)
def usage_totals(request: HttpRequest, filters: Query[UsageFilterIn]):
    """Requests, tokens and cost summed per the `group_by` dimensions; with `day`, per
    calendar day in SLUICE_USAGE_TIME_ZONE (newest first), as on the Usage page. A team
    user's teams' rows only: another team named in `team` is an empty list."""
    teams = team_rows_of(request)
    visible = Team.objects.all() if teams is None else Team.objects.filter(pk__in=teams)
    team = visible.filter(name=filters.team).first() if filters.team else None
    if filters.team and team is None:
        return []
    rows = selectors.usage_rows(
        since=filters.start or timezone.now() - DEFAULT_RANGE,
        until=filters.end,
        team_id=team.pk if team else None,
        model=filters.model or "",
        endpoint=filters.endpoint or "",
        key_prefix=filters.key_prefix or "",
        teams=teams,
    )
    # The same sums, per day too, as the Usage page and its CSV (limiter/usage/selectors.py).
    return selectors.usage_totals(rows, list(dict.fromkeys(filters.group_by)))


@router.get("/prices", response={200: list[PriceOut], **ERRORS})
@api_rule(READ_ALL)
def price_list(request: HttpRequest):
    rows, unreadable = selectors.prices_readable()
    return [row for row in rows if row.pk not in unreadable]  # those are on the Alerts page


@router.post("/prices", response={200: PriceOut, **ERRORS})
@api_rule(PRICES_WRITE)
def price_override(request: HttpRequest, payload: PriceOverrideIn):
    """Set (or, with nulls, clear) staff's negotiated price for a model."""
    return prices.price_override(
        model=payload.model,
        input_price=payload.override_input,
        output_price=payload.override_output,
        image_price=payload.image_price,
    )


def _budget_out(status: selectors.BudgetStatus) -> dict:
    budget = status.budget
    return {
        **{
            f: getattr(budget, f)
            for f in (
                "id",
                "model",
                "unit",
                "period",
                "limit",
                "soft_threshold",
                "enabled",
                "shadow",
            )
        },
        "team": budget.team.name,
        "key_prefix": budget.key.prefix if budget.key else None,
        "period_start": status.period_start,
        "resets_at": status.resets_at,
        "spent": status.spent,
        "left": status.left,
        "used_fraction": status.used_fraction,
    }


def _status(budget: Budget) -> dict:
    found = [
        s for s in selectors.budget_statuses(team_id=budget.team_id) if s.budget.pk == budget.pk
    ]
    return _budget_out(found[0])


@router.get("/teams/{team_id}/budgets", response={200: list[BudgetOut], **ERRORS})
@api_rule(TEAM_READ, team_from=team_pk("team_id"))
def budget_list(request: HttpRequest, team_id: int):
    team = get_object_or_404(Team, pk=team_id)
    return [_budget_out(s) for s in selectors.budget_statuses(team_id=team.pk)]


@router.post("/teams/{team_id}/budgets", response={201: BudgetOut, **ERRORS})
@api_rule(BUDGETS_WRITE, team_from=team_pk("team_id"))
def budget_create(request: HttpRequest, team_id: int, payload: BudgetIn):
    team = get_object_or_404(Team, pk=team_id)
    # A key budget names one of this team's keys; another team's key is "not found".
    key = get_object_or_404(ApiKey, pk=payload.key_id, team=team) if payload.key_id else None
    budget = services.budget_create(
        team=team,
        key=key,
        model=payload.model,
        unit=payload.unit,
        period=payload.period,
        limit=payload.limit,
        soft_threshold=payload.soft_threshold,
        enabled=payload.enabled,
        shadow=payload.shadow,
    )
    return Status(201, _status(budget))


def _budget(budget_id: int) -> Budget:
    # Its limit is None when the stored one cannot be read: it can be removed, or given
    # a new limit (a patch without one is refused: the limit cannot be null).
    budget = selectors.budget_get(pk=budget_id)
    if budget is None:
        raise Http404
    return budget


@router.patch("/budgets/{budget_id}", response={200: BudgetOut, **ERRORS})
@api_rule(BUDGETS_WRITE, team_from=owner_team(Budget, "budget_id"))
def budget_update(request: HttpRequest, budget_id: int, payload: BudgetPatchIn):
    budget = _budget(budget_id)
    fields = payload.dict(exclude_unset=True, exclude_none=True)
    shadow = fields.pop("shadow", None)
    if fields:
        services.budget_update(budget=budget, **fields)
    if shadow is not None:  # one switch, audited (dashboard/services.py)
        dashboard_services.budget_shadow_set(
            # The admin token (a str) acts as nobody in particular, as in dashboard/api.py.
            actor=auth if isinstance(auth := getattr(request, "auth", None), User) else None,
            budget=budget,
            shadow=shadow,
        )
    return _status(budget)


@router.delete("/budgets/{budget_id}", response={204: None, **ERRORS})
@api_rule(BUDGETS_WRITE, team_from=owner_team(Budget, "budget_id"))
def budget_delete(request: HttpRequest, budget_id: int):
    services.budget_delete(budget=_budget(budget_id))
    return Status(204, None)
