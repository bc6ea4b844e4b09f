"""The admin's pages for Sluice's own models. Each is an AuditedAdmin: every add, change
and delete made here is in the audit log (dashboard/admin.py)."""

from django.contrib import admin

from dashboard.admin import AuditedAdmin
from limiter.models import ApiKey, EndpointLimit, LimitProfile, Refusal, Team, UpstreamAccount


class EndpointLimitInline(admin.TabularInline):
    model = EndpointLimit
    extra = 0


@admin.register(LimitProfile)
class LimitProfileAdmin(AuditedAdmin):
    list_display = ["name", "description", "updated_at"]
    inlines = [EndpointLimitInline]


@admin.register(UpstreamAccount)
class UpstreamAccountAdmin(AuditedAdmin):
    list_display = ["name", "base_url", "api_key_setting", "profile", "is_default"]


@admin.register(Team)
class TeamAdmin(AuditedAdmin):
    list_display = ["name", "profile", "upstream", "paused", "created_at"]
    list_filter = ["paused", "profile"]


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    # The secret is never stored; the hash is not worth showing.
    list_display = [
        "prefix",
        "team",
        "name",
        "profile",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["team"]
    exclude = ["secret_hash"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:
        return False  # keys are issued in the dashboard or with `manage.py createkey`


@admin.register(Refusal)
class RefusalAdmin(AuditedAdmin):
    list_display = [
        "created_at",
        "team_name",
        "key_prefix",
        "endpoint",
        "model",
        "reason",
        "source",
        "retry_after_seconds",
    ]
    list_filter = ["source", "endpoint", "reason"]
    show_full_result_count = False  # the table may hold millions of rows

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
