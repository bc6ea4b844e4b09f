"""What a web process drops and does when the configuration changes: one registry.

A change saved anywhere (limiter/signals.py, limiter/jobs/ownership.py) is broadcast to
every web process on CONFIG_GROUP; each hears it (limiter/protocol/broadcasts.py) and
calls `heard`. The process that saved it also drops its own caches at once, before the
broadcast comes back to it (`drop_caches`), so its next request sees the change.

Whatever holds configuration registers here, from its own module, so that this layer
(and the core that saves the changes) imports nothing above it:

- a cache registers its `clear` with `register_cache`, naming the broadcasts that make
  it stale (CONFIG_CHANGED by default; MODELS_CHANGED when fine-tuned models were
  recorded). Clears must be cheap and safe from any thread: `drop_caches` runs in the
  thread that committed the change.
- whatever acts on a change (the team API re-checks the keys of its calls in flight)
  registers with `on_config_changed`; it runs on the event loop, after every cache was
  dropped, so that what it reads is fresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from limiter.protocol import events

logger = logging.getLogger(__name__)

CHANGES = (events.CONFIG_CHANGED, events.MODELS_CHANGED)

_caches: dict[str, list[Callable[[], None]]] = {kind: [] for kind in CHANGES}
_listeners: list[Callable[[], None]] = []


def register_cache(
    clear: Callable[[], None], *, on: Iterable[str] = (events.CONFIG_CHANGED,)
) -> None:
    """Call `clear` whenever a change of the kinds `on` is made or heard."""
    for kind in on:
        if kind not in _caches:
            raise ValueError(f"not a configuration change: {kind!r}")
        if clear not in _caches[kind]:
            _caches[kind].append(clear)


def on_config_changed(listener: Callable[[], None]) -> None:
    """Call `listener` on the event loop, after the caches are dropped, whenever a
    configuration change is broadcast (e.g. the team API re-checks its calls' keys)."""
    if listener not in _listeners:
        _listeners.append(listener)


def drop_caches(kind: str = events.CONFIG_CHANGED) -> None:
    """Drop every cache a change of `kind` makes stale, in this process (any thread)."""
    for clear in _caches[kind]:
        clear()


def heard(kind: str) -> None:
    """A change of `kind` was broadcast to this process (on its event loop): drop the
    caches, then tell the listeners of a configuration change."""
    drop_caches(kind)
    if kind != events.CONFIG_CHANGED:
        return
    for listener in _listeners:
        try:
            listener()
        except Exception:  # one listener's failure must not keep the change from the rest
            logger.exception("a configuration-change listener failed")
