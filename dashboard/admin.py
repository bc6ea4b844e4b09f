"""Django's admin, let in by the same policy: an organisation role (READ_ALL) opens it,
then each model page asks the permissions of the role's Group (dashboard/role_permissions.py),
so an auditor sees it read-only and only an admin sees users and groups.

Installed as `dashboard.apps.SluiceAdminConfig` in place of `django.contrib.admin`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse

from dashboard import policy
from dashboard.access import SAFE_METHODS
from dashboard.audit import refused_record
from dashboard.models import TeamMembership

V = TypeVar("V", bound=Callable[..., Any])


class SluiceAdminSite(admin.AdminSite):
    site_header = "Sluice administration"

    def has_permission(self, request: HttpRequest) -> bool:
        return policy.allows(request.user, policy.READ_ALL)

    def admin_view(self, view: V, cacheable: bool = False) -> V:
        inner = super().admin_view(view, cacheable)

        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            # Signed in without a role: 403, not the admin's sign-in form again.
            if (
                request.user.is_authenticated
                and not self.has_permission(request)
                and request.path != reverse("admin:logout", current_app=self.name)
            ):
                raise PermissionDenied
            try:
                return inner(request, *args, **kwargs)
            except PermissionDenied:
                if request.method not in SAFE_METHODS:
                    refused_record(request=request, user=request.user, rule="admin")
                raise

        return cast(V, guarded)


@admin.register(TeamMembership)
class TeamMembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role"]
    list_filter = ["role", "team"]

    # Roles change through `manage.py adduser` or the identity provider, which audit them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
