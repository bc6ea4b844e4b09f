"""A budget saved or deleted is a configuration change: the limiter reloads its copy of
the budgets at once (the same broadcast and version bump as a limit change). A price
override is broadcast the same way, and every web process reloads its prices
(limiter/usage/prices.py registers them as a cache)."""

from __future__ import annotations

from limiter.signals import watch_configuration
from limiter.usage.models import Budget, ModelPrice

# Together's list prices are written with update(): no signal.
watch_configuration(Budget, ModelPrice)
