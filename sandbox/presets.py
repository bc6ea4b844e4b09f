"""Ready-made sandbox configurations.

`new_organisation` is the sandbox `make run` mounts (sandbox/mount.py): Together as a new
organisation meets it. Every model is limited on its own, per second, from a floor equal to
the seed's per-minute figure for its endpoint kind (the default profile of
limiter/migrations/0002_seed_default_profile.py: chat and completions 600 a minute,
embeddings and rerank 300, images 60; audio 60, from 0012_seed_audio_limits), and the
limit moves with the organisation's successful traffic (the dynamic mode,
sandbox/dynamic.py). Its headers say so the way Together does: `x-ratelimit-limit: 10` (a
second) for a chat model, 5 for an embeddings model, 1 for an image model. So Sluice
learns ceilings equal to the seed's rows, and a newcomer's Live page shows them.

The bare `SandboxConfig()` limits nothing (tests rely on that); tests that want Together's
behaviour ask for it here or through `DynamicLimits`.
"""

from __future__ import annotations

from .catalog import model_types
from .config import DynamicLimits, SandboxConfig

# Requests a minute a new organisation gets per model, by the catalogue's model type: the
# seed's table (tests/sandbox/test_presets.py holds it equal to the seed migration's rows).
SEED_PER_MINUTE: dict[str, int] = {
    "chat": 600,
    "language": 600,  # completions
    "embedding": 300,
    "rerank": 300,
    "image": 60,
    # limiter/migrations/0012_seed_audio_limits.py: speech and transcription 60 a minute.
    "audio": 60,
    "transcribe": 60,
}
# How far a model's rate may grow with traffic: Together's dynamic rate is about twice the
# recent successful rate; the cap keeps a long demo from growing without end.
GROWTH_CAP = 4


def new_organisation_limits(extra_models: list[str] | None = None) -> DynamicLimits:
    """The dynamic limits of a new organisation: each model floored at its kind's seed rate."""
    floors = {
        model: SEED_PER_MINUTE[kind]
        for model, kind in model_types(extra_models or []).items()
        if kind in SEED_PER_MINUTE
    }
    return DynamicLimits(
        floor_per_minute=SEED_PER_MINUTE["chat"],  # models it does not list are chat models
        cap_per_minute=GROWTH_CAP * max(SEED_PER_MINUTE.values()),
        model_floors=floors,
        # Each floor is also that model's cap times GROWTH_CAP, so an image model stays small.
        model_caps={model: GROWTH_CAP * floor for model, floor in floors.items()},
    )


def new_organisation(api_key: str | None = None) -> SandboxConfig:
    """The sandbox of `make run`: Together's per-model dynamic limits from the seed's rates."""
    return SandboxConfig(api_key=api_key, dynamic=new_organisation_limits())
