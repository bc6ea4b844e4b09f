"""The team page's budget forms: add a budget, remove one. Operators and admins only
(BUDGETS_WRITE), CSRF-checked POSTs; a refused form is shown again on the team page
with its errors. Each change is audited and reaches the limiter at once (the save
broadcasts)."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from dashboard import forms, services, views
from dashboard.access import owner_team, rule, team_pk
from dashboard.policy import BUDGETS_WRITE
from dashboard.views import StaffRequest
from limiter.models import Team
from limiter.usage import selectors as usage_selectors
from limiter.usage.models import Budget


@require_POST
@rule(BUDGETS_WRITE, team_from=team_pk())
def budget_create(request: StaffRequest, pk: int) -> HttpResponse:
    team = get_object_or_404(Team, pk=pk)
    form = forms.BudgetForm(request.POST, team=team)
    if not form.is_valid():
        response = views.team(request, pk, budget_form=form)
        response.status_code = 400
        return response
    budget = services.budget_add(actor=request.user, budget=form.save(commit=False))
    messages.success(request, f"Budget added: {budget}.")
    return redirect("dashboard:team", pk=pk)


@require_POST
@rule(BUDGETS_WRITE, team_from=owner_team(Budget))
def budget_shadow(request: StaffRequest, pk: int) -> HttpResponse:
    """One click: a budget to shadow (`shadow=1`) or enforced (`shadow=0`), audited."""
    budget = usage_selectors.budget_get(pk=pk)
    if budget is None:
        raise Http404
    shadow = request.POST.get("shadow") == "1"
    services.budget_shadow_set(actor=request.user, budget=budget, shadow=shadow)
    messages.success(
        request, f"Budget {budget} is {'shadow' if shadow else 'enforced'} from the next call."
    )
    return redirect("dashboard:team", pk=budget.team_id)


@require_POST
@rule(BUDGETS_WRITE, team_from=owner_team(Budget))
def budget_delete(request: StaffRequest, pk: int) -> HttpResponse:
    # One whose stored limit cannot be read comes with None for it: it can be removed.
    budget = usage_selectors.budget_get(pk=pk)
    if budget is None:
        raise Http404
    team_id, shown = budget.team_id, str(budget)
    services.budget_remove(actor=request.user, budget=budget)
    messages.success(request, f"Budget removed: {shown}.")
    return redirect("dashboard:team", pk=team_id)
