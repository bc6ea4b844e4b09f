"""Django's admin site, let in by the same policy: an organisation role (READ_ALL) opens it,
then each model page asks the permissions of the role's Group (dashboard/role_permissions.py),
so an auditor sees it read-only and only an admin sees users and groups.

Installed as `dashboard.apps.SluiceAdminConfig` in place of `django.contrib.admin`. A module
of its own: Django builds the site when the first model is registered (django.contrib.auth's
admin, imported by dashboard/admin.py), so the site cannot live in a module still loading.
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

V = TypeVar("V", bound=Callable[..., Any])


class SluiceAdminSite(admin.AdminSite):
    site_header = "Sluice administration"

    def has_permission(self, request: HttpRequest) -> bool:
        return policy.allows(request.user, policy.READ_ALL)

    def admin_view(self, view: V, cacheable: bool = False) -> V:
        inner = super().admin_view(view, cacheable)

        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                # Signed in without a role: 403, not the admin's sign-in form again.
                if (
                    request.user.is_authenticated
                    and not self.has_permission(request)
                    and request.path != reverse("admin:logout", current_app=self.name)
                ):
                    raise PermissionDenied
                return inner(request, *args, **kwargs)
            except PermissionDenied:
                if request.method not in SAFE_METHODS:
                    refused_record(request=request, user=request.user, rule="admin")
                raise

        return cast(V, guarded)
