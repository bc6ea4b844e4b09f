"""Every change an ops user makes, from the dashboard pages or the ops API.

Each service saves through the models (so `limiter/signals.py` broadcasts the change
and the gateway uses it on the next request) and writes an AuditEntry with the old and
new values in the same transaction. `actor` is None for the admin token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from dashboard import live
from dashboard.models import (
    TOKEN_PREFIX,
    TOKEN_VISIBLE_PREFIX_LENGTH,
    AuditEntry,
    PersonalToken,
    TokenScope,
)
from limiter import services as limiter_services
from limiter.alerts import services as alert_services
from limiter.alerts.models import Webhook
from limiter.alerts.payload import redact_url
from limiter.alerts.services import Rates
from limiter.authority.learned import learned_delete
from limiter.models import ApiKey, EndpointLimit, LimitProfile, Refusal, Team, UpstreamAccount
from limiter.services import IssuedKey
from limiter.usage.models import Budget

TOKEN_ACTOR = "admin token"

MSG_NAME_TAKEN = "The name '{name}' is already taken."
MSG_PROFILE_IN_USE = (
    "The profile '{name}' is used by teams, keys or upstream accounts; reassign them first."
)
MSG_LIMIT_EXISTS = "The profile '{profile}' already has a limit for '{endpoint}'."
MSG_MODEL_LIMIT_EXISTS = (
    "The profile '{profile}' already has a limit for '{model}' on '{endpoint}'."
)


def _exists_message(*, profile: LimitProfile, endpoint: str, model: str) -> str:
    if model:
        return MSG_MODEL_LIMIT_EXISTS.format(profile=profile.name, endpoint=endpoint, model=model)
    return MSG_LIMIT_EXISTS.format(profile=profile.name, endpoint=endpoint)


def limit_exists(*, profile: LimitProfile, endpoint: str, model: str = "") -> bool:
    """Whether the profile has a row for this endpoint and model. Model names and globs
    match without regard to case, so `FLUX*` and `flux*` would be one row twice."""
    return profile.limits.filter(endpoint=endpoint, model__iexact=model).exists()


LIMIT_FIELDS = (
    "requests_per_minute",
    "pace_per_minute",
    "burst",
    "tokens_per_minute",
    "max_concurrent",
    "queue_depth",
    "max_queue_wait_seconds",
    "max_batch_requests",
    "shadow",
)


class ServiceError(Exception):
    """A change refused for a reason the user can fix; the message says which."""


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, Decimal):  # a budget's limit: exact, as the form took it
        return str(value)
    return value


def _values(obj: models.Model, fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {name: _json_value(getattr(obj, name)) for name in fields}


def audit_record(
    *,
    actor: User | None,
    action: str,
    obj: models.Model,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
    actor_name: str = "",
) -> AuditEntry:
    """`actor_name` names an actor that is not a user (a command); by default the user,
    or the admin token when there is none."""
    # None only on Options not yet attached to a model class, never on a saved row's.
    object_type = obj._meta.model_name
    assert object_type is not None
    return AuditEntry.objects.create(
        actor=actor,
        actor_name=actor_name or (actor.get_username() if actor is not None else TOKEN_ACTOR),
        action=action,
        object_type=object_type,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        old_values=old or {},
        new_values=new or {},
    )


def _update(*, actor: User | None, obj: models.Model, data: dict[str, Any], action: str) -> bool:
    """Apply `data`, validate, save, and audit only the fields that changed.
    Returns whether anything changed (an unchanged save would broadcast for nothing)."""
    changed = [name for name, value in data.items() if getattr(obj, name) != value]
    if not changed:
        return False
    old = _values(obj, changed)
    for name in changed:
        # full_clean lets None through for a blank-allowed field; the database would not.
        if data[name] is None and not obj._meta.get_field(name).null:
            raise ValidationError({name: ["This field cannot be null."]})
        setattr(obj, name, data[name])
    obj.full_clean()
    obj.save(update_fields=changed)
    audit_record(actor=actor, action=action, obj=obj, old=old, new=_values(obj, changed))
    return True


# --- profiles and limits ------------------------------------------------------------------
@transaction.atomic
def profile_create(
    *, actor: User | None, name: str, description: str = "", copy_from: LimitProfile | None = None
) -> LimitProfile:
    """A new profile, starting from `copy_from`'s limits (the default profile when None),
    so it is usable the moment it is assigned."""
    if LimitProfile.objects.filter(name=name).exists():
        raise ServiceError(MSG_NAME_TAKEN.format(name=name))
    source = copy_from or limiter_services.profile_default()
    profile = LimitProfile(
        name=name,
        description=description,
        model_fallbacks=dict(source.model_fallbacks),
        coalesce_embeddings=source.coalesce_embeddings,
        coalesce_max_inputs=source.coalesce_max_inputs,
    )
    profile.full_clean()
    profile.save()
    for row in source.limits.all():
        EndpointLimit.objects.create(
            profile=profile, endpoint=row.endpoint, model=row.model, **_values(row, LIMIT_FIELDS)
        )
    audit_record(
        actor=actor,
        action="create",
        obj=profile,
        new={"name": name, "description": description, "copied_from": source.name},
    )
    return profile


@transaction.atomic
def profile_update(
    *, actor: User | None, profile: LimitProfile, data: dict[str, Any]
) -> LimitProfile:
    if (
        "name" in data
        and LimitProfile.objects.filter(name=data["name"]).exclude(pk=profile.pk).exists()
    ):
        raise ServiceError(MSG_NAME_TAKEN.format(name=data["name"]))
    _update(actor=actor, obj=profile, data=data, action="update")
    return profile


@transaction.atomic
def profile_delete(*, actor: User | None, profile: LimitProfile) -> None:
    old = _values(profile, ("name", "description"))
    audit_record(actor=actor, action="delete", obj=profile, old=old)
    try:
        profile.delete()
    except ProtectedError as exc:
        raise ServiceError(MSG_PROFILE_IN_USE.format(name=profile.name)) from exc


@transaction.atomic
def limit_create(
    *,
    actor: User | None,
    profile: LimitProfile,
    endpoint: str,
    data: dict[str, Any],
    model: str = "",
) -> EndpointLimit:
    """A row for an endpoint kind, or (with `model`, a name or glob) a model's own row
    there. Effective at once: the save broadcasts the change (limiter/signals.py)."""
    exists = _exists_message(profile=profile, endpoint=endpoint, model=model)
    if limit_exists(profile=profile, endpoint=endpoint, model=model):
        raise ServiceError(exists)
    limit = EndpointLimit(profile=profile, endpoint=endpoint, model=model, **data)
    limit.full_clean()
    try:
        limit.save()
    except IntegrityError as exc:  # created by someone else since the check above
        raise ServiceError(exists) from exc
    audit_record(
        actor=actor,
        action="create",
        obj=limit,
        new=_values(limit, ("endpoint", "model", *LIMIT_FIELDS)),
    )
    return limit


@transaction.atomic
def limit_update(
    *, actor: User | None, limit: EndpointLimit, data: dict[str, Any]
) -> EndpointLimit:
    _update(
        actor=actor,
        obj=limit,
        data={k: v for k, v in data.items() if k in LIMIT_FIELDS},
        action="update",
    )
    return limit


@transaction.atomic
def limit_delete(*, actor: User | None, limit: EndpointLimit) -> None:
    audit_record(
        actor=actor,
        action="delete",
        obj=limit,
        old=_values(limit, ("endpoint", "model", *LIMIT_FIELDS)),
    )
    limit.delete()


# --- learned ceilings -----------------------------------------------------------------------
MSG_RESET_UNCONFIRMED = (
    "The limiter did not confirm within a second; the stored ceiling is gone, and the "
    "limiter forgets its own when the message reaches it."
)


def learned_ceiling_reset(
    *, actor: User | None, account: UpstreamAccount, endpoint: str, model: str
) -> bool:
    """Forget what was learned of one model's limit on an account: the stored row now, and
    the limiter's own state (it paces the model at its profile's row again, until
    Together's next answer). Returns whether the limiter confirmed."""
    with transaction.atomic():
        learned_delete(account=str(account.pk), endpoint=endpoint, model=model)
        audit_record(
            actor=actor,
            action="reset_ceiling",
            obj=account,
            old={"endpoint": endpoint, "model": model},
        )
    # After the commit: the message is not undone by a rollback.
    return async_to_sync(live.ceiling_reset_send)(
        account=str(account.pk), endpoint=endpoint, model=model
    )


# --- teams -------------------------------------------------------------------------------
@transaction.atomic
def team_create(*, actor: User | None, name: str, profile: LimitProfile | None = None) -> Team:
    team, created = limiter_services.team_get_or_create(name=name, profile=profile)
    if not created:
        raise ServiceError(MSG_NAME_TAKEN.format(name=name))
    audit_record(
        actor=actor, action="create", obj=team, new=_values(team, ("name", "profile", "upstream"))
    )
    return team


@transaction.atomic
def profile_assign(*, actor: User | None, team: Team, profile: LimitProfile) -> Team:
    _update(actor=actor, obj=team, data={"profile": profile}, action="assign_profile")
    return team


@transaction.atomic
def team_pause(*, actor: User | None, team: Team, paused: bool) -> Team:
    _update(actor=actor, obj=team, data={"paused": paused}, action="pause" if paused else "resume")
    return team


# --- keys ----------------------------------------------------------------------------------
KEY_FIELDS = ("prefix", "name", "profile", "expires_at", "revoked_at")


@transaction.atomic
def key_create(
    *,
    actor: User | None,
    team: Team,
    name: str = "",
    profile: LimitProfile | None = None,
    expires_at: datetime | None = None,
) -> IssuedKey:
    issued = limiter_services.key_issue(
        team=team, name=name, profile=profile, expires_at=expires_at
    )
    audit_record(actor=actor, action="create", obj=issued.key, new=_values(issued.key, KEY_FIELDS))
    return issued


@transaction.atomic
def key_revoke(*, actor: User | None, key: ApiKey) -> ApiKey:
    if key.revoked_at is not None:
        return key
    old = _values(key, ("revoked_at",))
    limiter_services.key_revoke(key=key)
    audit_record(actor=actor, action="revoke", obj=key, old=old, new=_values(key, ("revoked_at",)))
    return key


@transaction.atomic
def key_rotate(*, actor: User | None, key: ApiKey) -> IssuedKey:
    old = _values(key, ("revoked_at",))
    issued = limiter_services.key_rotate(key=key)
    audit_record(
        actor=actor,
        action="rotate",
        obj=key,
        old=old,
        new={**_values(key, ("revoked_at",)), "replaced_by": issued.key.prefix},
    )
    audit_record(actor=actor, action="create", obj=issued.key, new=_values(issued.key, KEY_FIELDS))
    return issued


# --- personal API tokens -------------------------------------------------------------------
TOKEN_FIELDS = ("prefix", "name", "scope", "expires_at", "revoked_at")


@dataclass(frozen=True)
class IssuedToken:
    token: PersonalToken
    secret: str  # shown once, never stored


@transaction.atomic
def token_create(
    *,
    user: User,
    name: str = "",
    scope: str = TokenScope.FULL,
    expires_at: datetime | None = None,
    actor: User | None,
    actor_name: str = "",
) -> IssuedToken:
    """A personal API token for `user`, acting with the user's role (or reads only, scope
    `read`). The audit entry names the user and the token's prefix; the secret is only in
    the return value."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = PersonalToken.objects.create(
        user=user,
        name=name,
        prefix=secret[:TOKEN_VISIBLE_PREFIX_LENGTH],
        secret_hash=PersonalToken.hash_secret(secret),
        scope=scope,
        expires_at=expires_at,
    )
    audit_record(
        actor=actor,
        actor_name=actor_name,
        action="create",
        obj=token,
        new={"user": user.get_username(), **_values(token, TOKEN_FIELDS)},
    )
    return IssuedToken(token=token, secret=secret)


@transaction.atomic
def token_revoke(*, token: PersonalToken, actor: User | None) -> PersonalToken:
    """Revoke a token (its next request is refused with 401); revoking twice is a no-op."""
    revoked = PersonalToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db(fields=["revoked_at"])
    if revoked:
        audit_record(
            actor=actor,
            action="revoke",
            obj=token,
            old={"user": token.user.get_username(), "prefix": token.prefix, "revoked_at": None},
            new={"revoked_at": _json_value(token.revoked_at)},
        )
    return token


# --- retention ---------------------------------------------------------------------------------
def refusal_prune(*, older_than: datetime, batch_size: int = 10_000) -> int:
    """Delete refusals created before `older_than`, oldest first, in batches: each batch
    is its own short transaction, so the recorder's inserts are never blocked for long."""
    deleted = 0
    while True:
        ids = list(
            Refusal.objects.filter(created_at__lt=older_than)
            .order_by("created_at", "id")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        deleted += Refusal.objects.filter(id__in=ids).delete()[0]


# --- alert webhooks ----------------------------------------------------------------------
def webhook_add(
    *, actor: User | None, name: str, url: str, team: Team | None, rates: Rates | None = None
) -> Webhook:
    """A new webhook; the audit log keeps its URL redacted (it carries the secret)."""
    with transaction.atomic():
        webhook = alert_services.webhook_create(name=name, url=url, team=team, rates=rates)
        audit_record(
            actor=actor,
            action="webhook_create",
            obj=webhook,
            new={
                "name": name,
                "team": team.name if team else "",
                "url": redact_url(url),
                **{k: v for k, v in (rates or {}).items() if v is not None},
            },
        )
    return webhook


def webhook_rates_update(*, actor: User | None, webhook: Webhook, rates: Rates) -> Webhook:
    """A webhook's own alert thresholds (None: back to the global setting), audited."""
    with transaction.atomic():
        old = {name: getattr(webhook, name) for name in rates}
        alert_services.webhook_set_rates(webhook=webhook, rates=rates)
        audit_record(actor=actor, action="webhook_rates", obj=webhook, old=old, new=dict(rates))
    return webhook


def webhook_enable(*, actor: User | None, webhook: Webhook, enabled: bool) -> Webhook:
    with transaction.atomic():
        old = webhook.enabled
        alert_services.webhook_set_enabled(webhook=webhook, enabled=enabled)
        audit_record(
            actor=actor,
            action="webhook_enable" if enabled else "webhook_disable",
            obj=webhook,
            old={"enabled": old},
            new={"enabled": enabled},
        )
    return webhook


# --- budgets --------------------------------------------------------------------------------
BUDGET_FIELDS = (
    "team",
    "key",
    "model",
    "unit",
    "period",
    "limit",
    "soft_threshold",
    "enabled",
    "shadow",
)


@transaction.atomic
def limit_shadow_set(*, actor: User | None, limit: EndpointLimit, shadow: bool) -> bool:
    """Switch a profile row between shadow (recorded, never refusing) and enforced.
    Audited; effective at once (the save broadcasts the change). Whether it changed."""
    return _update(actor=actor, obj=limit, data={"shadow": shadow}, action="update")


@transaction.atomic
def budget_shadow_set(*, actor: User | None, budget: Budget, shadow: bool) -> bool:
    """Switch a budget between shadow and enforced, as `limit_shadow_set`."""
    return _update(actor=actor, obj=budget, data={"shadow": shadow}, action="update")


def budget_add(*, actor: User | None, budget: Budget) -> Budget:
    """Save a budget a dashboard form validated, audited. The save broadcasts: the
    limiter holds it at once (limiter/usage/signals.py)."""
    budget.full_clean()
    with transaction.atomic():
        budget.save()
        audit_record(actor=actor, action="create", obj=budget, new=_values(budget, BUDGET_FIELDS))
    return budget


def budget_remove(*, actor: User | None, budget: Budget) -> None:
    old = _values(budget, BUDGET_FIELDS)
    with transaction.atomic():
        audit_record(actor=actor, action="delete", obj=budget, old=old)
        budget.delete()
