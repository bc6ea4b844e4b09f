"""A budget saved or deleted is a configuration change: the limiter reloads its copy of
the budgets at once (the same broadcast and version bump as a limit change). A price
override is broadcast the same way, and every web process reloads its prices."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save

from limiter.protocol.client import on_config_changed
from limiter.signals import _on_change
from limiter.usage.models import Budget, ModelPrice
from limiter.usage.prices import prices

for model in (Budget, ModelPrice):  # Together's list prices are written with update(): no signal
    post_save.connect(_on_change, sender=model, dispatch_uid=f"sluice-config-save-{model.__name__}")
    post_delete.connect(
        _on_change, sender=model, dispatch_uid=f"sluice-config-delete-{model.__name__}"
    )

on_config_changed(prices.expire)  # reloaded on the usage recorder's next tick
