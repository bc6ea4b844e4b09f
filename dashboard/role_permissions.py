"""Which Django model permissions each organisation role's Group holds.

Plain data and one function over models passed in, so the data migration (with its
historical models) and the post_migrate sync (dashboard/apps.py, for models added
later) apply the same table. `dashboard/policy.py` decides the dashboard and the ops
API; these permissions are what Django's admin asks.
"""

from __future__ import annotations

from typing import Any

ADMIN = "admin"
OPERATOR = "operator"
AUDITOR = "auditor"

# The apps whose rows the roles read; auth (users, groups) is the admin's alone.
SLUICE_APPS = ("limiter", "jobs", "usage", "alerts", "dashboard")

# (app_label, model) an operator may add, change and delete: limits, profiles, teams,
# keys, budgets, alerts, the learned ceilings (a reset deletes one) and the models marked
# as served on a dedicated endpoint.
OPERATOR_MODELS = (
    ("limiter", "endpointlimit"),
    ("limiter", "limitprofile"),
    ("limiter", "team"),
    ("limiter", "apikey"),
    ("limiter", "learnedceiling"),
    ("limiter", "dedicatedmodel"),
    ("usage", "budget"),
    ("alerts", "alert"),
)


def group_permissions_sync(group_model: Any, permission_model: Any) -> None:
    """Create the three groups if missing and set each one's permissions to the table:
    auditor the view permissions of Sluice's apps, operator those plus add/change/delete
    on OPERATOR_MODELS, admin every permission there is."""
    view = permission_model.objects.filter(
        content_type__app_label__in=SLUICE_APPS, codename__startswith="view_"
    )
    operator_write = permission_model.objects.none()
    for app_label, model in OPERATOR_MODELS:
        operator_write = operator_write | permission_model.objects.filter(
            content_type__app_label=app_label,
            content_type__model=model,
            codename__in=[f"{action}_{model}" for action in ("add", "change", "delete")],
        )
    wanted = {
        AUDITOR: list(view),
        OPERATOR: list(view) + list(operator_write),
        ADMIN: list(permission_model.objects.all()),
    }
    for name, permissions in wanted.items():
        group, _ = group_model.objects.get_or_create(name=name)
        group.permissions.set(permissions)
