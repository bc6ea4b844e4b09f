from django.contrib import admin

from limiter.models import ApiKey, EndpointLimit, LimitProfile, Refusal, Team, UpstreamAccount


class EndpointLimitInline(admin.TabularInline):
    model = EndpointLimit
    extra = 0


@admin.register(LimitProfile)
class LimitProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "description", "updated_at"]
    inlines = [EndpointLimitInline]


@admin.register(UpstreamAccount)
class UpstreamAccountAdmin(admin.ModelAdmin):
    list_display = ["name", "base_url", "api_key_setting", "profile", "is_default"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "profile", "upstream", "paused", "created_at"]
    list_filter = ["paused", "profile"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
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
class RefusalAdmin(admin.ModelAdmin):
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
