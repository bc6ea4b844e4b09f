"""A budget saved or deleted is a configuration change: the limiter reloads its copy of
the budgets at once (the same broadcast and version bump as a limit change)."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save

from limiter.signals import _on_change
from limiter.usage.models import Budget

post_save.connect(_on_change, sender=Budget, dispatch_uid="sluice-config-save-Budget")
post_delete.connect(_on_change, sender=Budget, dispatch_uid="sluice-config-delete-Budget")
