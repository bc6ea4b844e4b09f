from typing import Any

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.models.signals import post_migrate


def _role_permissions_sync(sender: AppConfig, **kwargs: Any) -> None:
    # The data migration set the groups' permissions for the models of its day; this
    # gives the roles those of models added since (the admin holds every permission).
    from django.contrib.auth.models import Group, Permission

    from dashboard.role_permissions import group_permissions_sync

    group_permissions_sync(Group, Permission)


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Sluice dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from dashboard import signals  # noqa: F401  (sign-ins reach the audit log)

        post_migrate.connect(_role_permissions_sync, sender=self)


class SluiceAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with its site asking the policy (dashboard/admin.py)."""

    default = False  # this module's default config is DashboardConfig
    default_site = "dashboard.admin.SluiceAdminSite"
