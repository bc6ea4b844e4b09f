"""Configuration changes take effect at once: any saved or deleted team, key, profile,
limit or upstream account is broadcast to every web process (CONFIG_GROUP), which
drops its cached keys and limits, and cuts the calls in flight of a key revoked or a
team paused (limiter/gateway/revocation.py). The limiter hears it too and reloads
its own copy of the limits (limiter/authority/config.py). Each change also bumps the
configuration version in its own transaction, so a ticket sent by a process that has
seen a change the limiter has not yet heard of makes the limiter reload first.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from limiter.models import ApiKey, ConfigVersion, EndpointLimit, LimitProfile, Team, UpstreamAccount
from limiter.protocol import events

logger = logging.getLogger(__name__)


def broadcast_config_changed() -> None:
    from limiter.gateway import keys
    from limiter.jobs.ownership import owned_models

    keys.cache.clear()  # this process, at once; the others through the broadcast
    owned_models.clear()  # a profile's shared_models may have changed
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


for model in (ApiKey, EndpointLimit, LimitProfile, Team, UpstreamAccount):
    post_save.connect(_on_change, sender=model, dispatch_uid=f"sluice-config-save-{model.__name__}")
    post_delete.connect(
        _on_change, sender=model, dispatch_uid=f"sluice-config-delete-{model.__name__}"
    )
