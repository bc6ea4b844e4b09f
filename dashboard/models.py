"""The audit log: every change an ops user makes in the dashboard or the ops API.

Written by `dashboard/services.py` in the same transaction as the change itself, so a
change without its audit entry (or the reverse) cannot be committed.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from limiter.models import HashedSecret, SecretQuerySet, Team


class AuditEntry(models.Model):
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Kept as a name as well as a link: the entry must survive deleting the user.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=40)
    object_type = models.CharField(max_length=40)
    object_id = models.CharField(max_length=40)
    object_repr = models.CharField(max_length=200)
    old_values = models.JSONField(default=dict, blank=True)
    new_values = models.JSONField(default=dict, blank=True)
    # How the actor acted when not through a session: "token <prefix>" for a personal
    # API token. Filled in by `save` from the actor (see `acting_token`).
    via = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return (
            f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} "
            f"{self.action} {self.object_repr}"
        )

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Every entry written for a user acting through a personal token (a change, or a
        # refused attempt at one) names the token, whichever code path writes it.
        if not self.via and self.actor_id is not None:
            token = acting_token(self.actor)
            if token is not None:
                self.via = f"token {token.prefix}"
        super().save(*args, **kwargs)


class TeamRole(models.TextChoices):
    VIEWER = "viewer"
    MAINTAINER = "maintainer"


class TeamMembership(models.Model):
    """A user's role on one team (dashboard/policy.py reads it). Organisation roles are
    Django Groups instead (dashboard/roles.py), so the admin's permissions follow them."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=12, choices=TeamRole.choices)

    class Meta:
        ordering = ["team__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="team_membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.role} of {self.team}"


class OidcIdentity(models.Model):
    """The person an identity provider vouches for (its issuer and `sub`), linked to the
    user single sign-on created for them (dashboard/oidc.py). A username or an email
    address is not an identity: a provider may let its users choose them."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identity"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)

    class Meta:
        verbose_name_plural = "OpenID Connect identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


# --- personal API tokens --------------------------------------------------------------------
TOKEN_PREFIX = "sluice-pat-"
TOKEN_VISIBLE_PREFIX_LENGTH = len(TOKEN_PREFIX) + 6
# The owner's User object of a request authenticated by a token carries it here (one
# object per request), so the policy narrows a read-only token and the audit names it.
_ACTING_TOKEN = "_sluice_acting_token"


class TokenScope(models.TextChoices):
    FULL = "full", "Full (my role)"
    READ = "read", "Read only"


class PersonalToken(HashedSecret):
    """A user's token for the ops API: it acts with its owner's role, or with reads only
    (scope `read`). Only a SHA-256 of the secret is kept; the secret is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80, blank=True)
    prefix = models.CharField(max_length=TOKEN_VISIBLE_PREFIX_LENGTH, db_index=True)
    scope = models.CharField(max_length=8, choices=TokenScope.choices, default=TokenScope.FULL)
    # last_used_at is written at most once a minute (TOKEN_LAST_USED_EVERY).

    objects = SecretQuerySet["PersonalToken"].as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def read_only(self) -> bool:
        return self.scope == TokenScope.READ

    def is_expired(self, now: Any = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


def act_through(user: Any, token: PersonalToken) -> None:
    """Mark this request's user object as acting through `token`."""
    user.__dict__[_ACTING_TOKEN] = token


def acting_token(user: Any) -> PersonalToken | None:
    """The personal token this user object acts through (None: a session, or no user)."""
    return getattr(user, "__dict__", {}).get(_ACTING_TOKEN)
