"""Personal API tokens at the ops API's door: from a presented secret to its owner.

The lookup is by the SHA-256 of the secret (a unique index), never by the secret: a
comparison's timing tells only about a hash of the caller's own input. A revoked or
expired token, or an inactive owner, is no token (401).
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.db.models import Q
from django.utils import timezone

from dashboard.models import TOKEN_PREFIX, PersonalToken, act_through

# last_used_at is written when older than this: a script polling every second costs one
# UPDATE a minute, not one a request.
TOKEN_LAST_USED_EVERY = timedelta(minutes=1)


def token_user(secret: str) -> User | None:
    """The owner of a usable token with this secret, marked as acting through it (the
    policy narrows a read-only token, the audit log names it); None otherwise."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = (
        PersonalToken.objects.usable()
        .select_related("user")
        .filter(secret_hash=PersonalToken.hash_secret(secret), user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= TOKEN_LAST_USED_EVERY:
        # Conditional, so concurrent requests write it once.
        PersonalToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - TOKEN_LAST_USED_EVERY)
        ).update(last_used_at=now)
    user = token.user
    act_through(user, token)
    return user
