"""Configuration changes take effect at once: any saved or deleted team, key, profile,
limit or upstream account is broadcast to every web process (CONFIG_GROUP), which
drops its caches (those registered in limiter/protocol/changes.py: keys, the models'
owners, prices) and cuts the calls in flight of a key revoked or a team paused
(limiter/gateway/revocation.py). The limiter hears it too and reloads its own copy of
the limits (limiter/authority/config.py). Each change also bumps the configuration
version in its own transaction, so a ticket sent by a process that has seen a change the
limiter has not yet heard of makes the limiter reload first.

Other apps' models that are configuration (budgets, price overrides) are watched the
same way with `watch_configuration`.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save

from limiter.models import (
    ApiKey,
    ConfigVersion,
    DedicatedModel,
    EndpointLimit,
    LimitProfile,
    Share,
    Team,
    UpstreamAccount,
)
from limiter.protocol import events
from limiter.protocol.changes import drop_caches

logger = logging.getLogger(__name__)


def broadcast_config_changed() -> None:
    drop_caches()  # this process, at once; the others through the broadcast
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(events.CONFIG_GROUP, {"type": events.CONFIG_CHANGED})
    except Exception:  # the change is saved; other processes fall back to their cache TTL
        logger.exception("could not broadcast a configuration change")


def _on_change(sender: type, **kwargs: object) -> None:
    ConfigVersion.bump()
    transaction.on_commit(broadcast_config_changed)


def watch_configuration(*watched: type[models.Model]) -> None:
    """A save or delete of any of `watched` is a configuration change."""
    for model in watched:
        name = model.__name__
        post_save.connect(_on_change, sender=model, dispatch_uid=f"sluice-config-save-{name}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"sluice-config-delete-{name}")


watch_configuration(
    ApiKey, DedicatedModel, EndpointLimit, LimitProfile, Share, Team, UpstreamAccount
)
