"""The audit log: every change an ops user makes in the dashboard or the ops API.

Written by `dashboard/services.py` in the same transaction as the change itself, so a
change without its audit entry (or the reverse) cannot be committed.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from limiter.models import Team


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

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return (
            f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} "
            f"{self.action} {self.object_repr}"
        )


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
