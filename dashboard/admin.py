"""The admin's registrations (Sluice's models, people and their groups) and their audit;
the site itself, let in by the policy, is `dashboard/admin_site.py`. Every add, change and
delete made in /admin/ is an AuditEntry, like a change made in the dashboard
(`dashboard/services.py`), with who, which object and the fields that changed. Secrets (a
key's hash, a password) are never written: a changed one reads "changed".

`AuditedAdmin` is the base of every ModelAdmin registered (tests/dashboard/test_admin.py
fails otherwise). It hooks where Django's admin records its own history: `log_addition`
and `log_change` run once per saved object after the object and its many-to-many fields
are saved (the change form, the user's password form), in the admin's transaction. The
values before a change are read when the admin loads the object (`get_object`), or from
the database for a row saved without loading it first. Inline rows (a profile's limits)
are their own entries (`save_formset`), and deletes are recorded before they happen, the
changelist's bulk action included (`delete_model`, `delete_queryset`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.http import HttpRequest

from dashboard import policy
from dashboard.models import TeamMembership
from dashboard.services import audit_record
from limiter.models import (
    ApiKey,
    DedicatedModel,
    EndpointLimit,
    LimitProfile,
    ManagedObject,
    Refusal,
    Team,
    UpstreamAccount,
)

SECRET_CHANGED = "changed"
# Fields whose value is a secret or stands for one: never written to the log.
SECRET_FIELDS = frozenset({"password", "secret_hash"})
ADDED, CHANGED, DELETED = "admin_create", "admin_change", "admin_delete"

_encoder = DjangoJSONEncoder()
V = TypeVar("V", bound=Callable[..., Any])


def _shown(value: Any) -> Any:
    if isinstance(value, models.Model):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return _encoder.default(value)  # datetime, Decimal, UUID, timedelta: as the API shows them


def snapshot(obj: models.Model) -> dict[str, Any]:
    """The row's values as the audit log shows them: each field by name, a link by its
    object's name, many-to-many links as a sorted list of names."""
    values = {
        field.name: _shown(getattr(obj, field.name))
        for field in obj._meta.concrete_fields
        # A save's own time stamp (updated_at) says nothing the entry's time does not.
        if not field.primary_key and not getattr(field, "auto_now", False)
    }
    if obj.pk is not None:
        for field in obj._meta.many_to_many:
            values[field.name] = sorted(str(o) for o in getattr(obj, field.name).all())
    return values


def _public(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name not in SECRET_FIELDS}


def _change(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict, dict]:
    names = [name for name in after if before.get(name) != after[name]]
    old = {n: SECRET_CHANGED if n in SECRET_FIELDS else before.get(n) for n in names}
    new = {n: SECRET_CHANGED if n in SECRET_FIELDS else after[n] for n in names}
    return old, new


def _actor(request: HttpRequest) -> User:
    # The admin lets in only signed-in staff.
    assert isinstance(request.user, User)
    return request.user


class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose every write is in the audit log."""

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj._audit_before = snapshot(obj)
        return obj

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change and not hasattr(obj, "_audit_before"):  # a changelist's inline edit
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            obj._audit_before = snapshot(stored) if stored is not None else {}
        super().save_model(request, obj, form, change)

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        audit_record(actor=_actor(request), action=ADDED, obj=obj, new=_public(snapshot(obj)))
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        # Loaded by get_object or save_model; a view that did neither (none of Django's)
        # gets every field, with no old value.
        old, new = _change(obj.__dict__.pop("_audit_before", {}), snapshot(obj))
        if new:  # nothing of its own changed when only its inline rows did
            audit_record(actor=_actor(request), action=CHANGED, obj=obj, old=old, new=new)
        return super().log_change(request, obj, message)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        actor = _actor(request)
        # The forms' instances already hold the posted values: the old ones are stored.
        pks = [f.instance.pk for f in formset.initial_forms if f.instance.pk is not None]
        stored = formset.model._default_manager.filter(pk__in=pks)
        before = {obj.pk: snapshot(obj) for obj in stored}
        for deleted in formset.deleted_forms:  # recorded while the row still exists
            if deleted.instance.pk in before:
                old = _public(before[deleted.instance.pk])
                audit_record(actor=actor, action=DELETED, obj=deleted.instance, old=old)
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            audit_record(actor=actor, action=ADDED, obj=obj, new=_public(snapshot(obj)))
        for obj, _fields in formset.changed_objects:
            old, new = _change(before.get(obj.pk, {}), snapshot(obj))
            if new:
                audit_record(actor=actor, action=CHANGED, obj=obj, old=old, new=new)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            audit_record(actor=_actor(request), action=DELETED, obj=obj, old=_public(snapshot(obj)))
            super().delete_model(request, obj)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # A team's (or a user's) memberships go with it: whoever may delete the team may
        # drop them. One by one they change only through dashboard/roles.py.
        perms_needed.discard(TeamMembership._meta.verbose_name)
        return deleted, counts, perms_needed, protected

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        # The changelist's "delete selected" action: one entry per row, in one transaction.
        with transaction.atomic():
            for obj in queryset:
                audit_record(
                    actor=_actor(request), action=DELETED, obj=obj, old=_public(snapshot(obj))
                )
            super().delete_queryset(request, queryset)


# People and their groups are staff roles: changes to them are audited too.
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # An organisation role is a group: staff status (what Django's admin sign-in asks)
        # follows it here as dashboard/roles.py keeps it, whichever way the group changed.
        user = form.instance
        staff = policy.org_role_of(user) is not None
        if user.is_staff != staff:
            user.is_staff = staff
            user.save(update_fields=["is_staff"])


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass


@admin.register(TeamMembership)
class TeamMembershipAdmin(AuditedAdmin):
    list_display = ["user", "team", "role"]
    list_filter = ["role", "team"]

    # Roles change through `manage.py adduser` or the identity provider, which audit them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Sluice's own models (the limiter's tables; the admin is the dashboard's) --------------
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
        "shadow",
        "retry_after_seconds",
    ]
    list_filter = ["source", "shadow", "endpoint", "reason"]
    show_full_result_count = False  # the table may hold millions of rows

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DedicatedModel)
class DedicatedModelAdmin(AuditedAdmin):
    """Ops mark a model served on a dedicated endpoint here (by_hand: the poll keeps it);
    the rows the limiter's poll found are listed beside them (limiter/authority/dedicated.py)."""

    list_display = ["model", "account", "by_hand", "endpoint_name", "created_at"]
    list_filter = ["account", "by_hand"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"by_hand": True}


@admin.register(ManagedObject)
class ManagedObjectAdmin(AuditedAdmin):
    """Organisation-level objects teams created through Sluice, and who owns each."""

    list_display = ["kind", "object_id", "team", "created_at"]
    list_filter = ["kind", "team"]
