"""Who may use which fine-tuned model, answered without a database query per request.

Every team's fine-tunes run in one Together account, so Together would serve any of
them to any key. Sluice records each team's output models and checkpoints
(`TeamModel`); this module keeps them in memory as name -> owner, loaded lazily and
dropped whenever they change: at once in the process that recorded them, and in every
other web process through the MODELS_CHANGED broadcast on CONFIG_GROUP (a limit
profile's `shared_models` changes through the ordinary CONFIG_CHANGED). The TTL is
only a backstop for a lost broadcast.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import close_old_connections

from limiter.caching import GenerationCache
from limiter.jobs import selectors
from limiter.jobs.selectors import ModelOwner
from limiter.protocol import events
from limiter.protocol.changes import drop_caches, register_cache

logger = logging.getLogger(__name__)

OWNERS_TTL = 30.0
OWNERS = "owners"  # the one entry of its cache


def model_key(name: str) -> str:
    """How a model name is looked up and stored: case and surrounding blanks ignored."""
    return name.strip().lower()


def checkpoint_base(name: str) -> str:
    """`ft-...:10` names step 10 of checkpoint `ft-...`: ownership is the job's."""
    return model_key(name).split(":", 1)[0]


def usable(owners: dict[str, ModelOwner], *, team_id: int, name: str) -> bool:
    """A model no team owns is Together's (or unknown to it); an owned one is usable by
    its team, or by anyone when the owner's profile shares it."""
    key = model_key(name)
    for candidate in (key, checkpoint_base(key)):
        owner = owners.get(candidate)
        if owner is not None and owner.team_id != team_id and not owner.shared:
            return False
    return True


class OwnedModels:
    """The map, name -> owner, as last read; a change to it drops it (`clear`), and a read
    that raced the change is not kept (limiter/caching.py)."""

    def __init__(self) -> None:
        self._cache: GenerationCache[str, dict[str, ModelOwner]] = GenerationCache(
            ttl=OWNERS_TTL, maxsize=1
        )

    def clear(self) -> None:
        self._cache.clear()

    @property
    def loaded(self) -> dict[str, ModelOwner] | None:
        """The map held now, if any."""
        return self._cache.get(OWNERS)

    async def owners(self) -> dict[str, ModelOwner]:
        owners = self.loaded
        if owners is not None:
            return owners
        # thread_sensitive: loads run one at a time, so a burst after a change finds the
        # map the first load installed instead of querying again.
        return await sync_to_async(self.load, thread_sensitive=True)()

    def load(self) -> dict[str, ModelOwner]:
        """The map, read from the database unless one is held (blocking)."""
        owners = self.loaded
        if owners is not None:
            return owners
        generation = self._cache.generation
        close_old_connections()  # this runs outside a request: drop a connection the DB closed
        owners = selectors.model_owners()
        self._cache.put(OWNERS, owners, generation)
        return owners

    async def usable(self, *, team_id: int, name: str) -> bool:
        return usable(await self.owners(), team_id=team_id, name=name)


owned_models = OwnedModels()
# A profile's shared_models change with the configuration; recorded models, on their own.
register_cache(owned_models.clear, on=(events.CONFIG_CHANGED, events.MODELS_CHANGED))


def broadcast_models_changed() -> None:
    """Run after the commit that recorded new models: this process drops its map at once,
    the others when the broadcast reaches them."""
    drop_caches(events.MODELS_CHANGED)
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(events.CONFIG_GROUP, {"type": events.MODELS_CHANGED})
    except Exception:  # recorded all the same; other processes fall back to the TTL
        logger.exception("could not broadcast new fine-tuned models")
