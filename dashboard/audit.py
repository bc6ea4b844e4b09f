"""Audit entries that are not changes: a refused attempt at a write and a sign-in (or a
failed one), each with who and from where. Changes are audited by the services that
make them (dashboard/services.py, dashboard/roles.py)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest

from dashboard.models import AuditEntry
from limiter.gateway.throttle import client_address, trusted_networks

ACTION_REFUSED = "refused"
ACTION_SIGN_IN = "sign_in"
ACTION_SIGN_IN_FAILED = "sign_in_failed"
ACTION_SIGN_OUT = "sign_out"
# Entries about access, not changes.
ACCESS_ACTIONS = (ACTION_REFUSED, ACTION_SIGN_IN, ACTION_SIGN_IN_FAILED, ACTION_SIGN_OUT)


def request_address(request: HttpRequest) -> str:
    """The caller's address: the peer, or what a trusted proxy (SLUICE_TRUSTED_PROXIES)
    says it forwarded, as the team API's throttle reads it."""
    return client_address(
        request.META.get("REMOTE_ADDR", ""),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        trusted_networks(settings.SLUICE_TRUSTED_PROXIES),
    )


def _actor(user: User | AnonymousUser | None) -> tuple[User | None, str]:
    if isinstance(user, User):
        return user, user.get_username()
    return None, ""


def refused_record(*, request: HttpRequest, user: User | AnonymousUser | None, rule: str) -> None:
    """A write the policy refused: who, which route and rule, from where."""
    actor, name = _actor(user)
    AuditEntry.objects.create(
        actor=actor,
        actor_name=name or "anonymous",
        action=ACTION_REFUSED,
        object_type="route",
        object_id=rule[:40],
        object_repr=f"{request.method} {request.path}"[:200],
        new_values={"address": request_address(request), "rule": rule},
    )


def sign_in_record(
    *, request: HttpRequest | None, user: User | None, username: str, action: str
) -> None:
    """A sign-in, a failed one (the username tried), or a sign-out."""
    AuditEntry.objects.create(
        actor=user,
        actor_name=(username or "anonymous")[:150],
        action=action,
        object_type="user",
        object_id=str(user.pk) if user is not None else "",
        object_repr=username[:200],
        new_values={"address": request_address(request) if request is not None else ""},
    )
