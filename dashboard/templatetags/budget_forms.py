"""`{% budget_form team %}`: the team page's budgets and the form that adds one
(templates/dashboard/_budget_form.html), so the team view need not know of budgets."""

from __future__ import annotations

from typing import Any

from django import template

from dashboard.forms import BudgetForm
from limiter.models import Team
from limiter.usage.selectors import team_budgets

register = template.Library()


@register.inclusion_tag("dashboard/_budget_form.html", takes_context=True)
def budget_form(context: template.Context, team: Team) -> dict[str, Any]:
    # A form refused by the budget view comes back bound, with its errors.
    form = context.get("budget_form") or BudgetForm(team=team)
    budgets, unreadable = team_budgets(team_id=team.pk)
    return {
        "team": team,
        "budgets": budgets,
        "unreadable": unreadable,  # their limit cannot be read: shown so, to be removed
        "form": form,
        "csrf_token": context.get("csrf_token"),
    }
