"""Configuration of the sandbox upstream: what it limits, how it misbehaves, how fast jobs run.

Everything here can be changed at run time through `POST {prefix}/sandbox/control` (or
`SandboxState.configure`), so one running sandbox can play every scenario a test needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The endpoint kinds Together limits separately; each has its own sliding windows.
KINDS: tuple[str, ...] = ("chat", "completions", "embeddings", "images", "rerank")


@dataclass
class KindLimits:
    """Request limits of one endpoint kind, per API key. None means unlimited."""

    requests_per_second: int | None = None
    requests_per_minute: int | None = None


def _default_limits() -> dict[str, KindLimits]:
    return {kind: KindLimits() for kind in KINDS}


@dataclass
class SandboxConfig:
    # Auth: None accepts any non-empty bearer key; a value accepts only that key.
    api_key: str | None = None
    limits: dict[str, KindLimits] = field(default_factory=_default_limits)
    # Reported in x-tokenlimit-* headers only; Together shows it, the sandbox does not enforce it.
    tokens_per_second: int = 100_000

    # Fault injection. Random faults are seeded so a run is reproducible.
    latency_ms: float = 0.0
    fail_rate_429: float = 0.0
    fail_rate_503: float = 0.0
    seed: int = 0
    fail_next: list[int] = field(default_factory=list)
    inject_retry_after_s: float = 1.0
    overloaded_models: list[str] = field(default_factory=list)

    # Generation.
    default_max_tokens: int = 16
    stream_chunk_delay_ms: float = 0.0
    # Accepted on top of the built-in catalogue (listed as chat models).
    extra_models: list[str] = field(default_factory=list)

    # Jobs run in accelerated time.
    fine_tune_seconds: float = 2.0
    batch_seconds: float = 2.0
    max_running_fine_tunes: int | None = None
    # Together rejects jobs naming a file it does not hold; tests that only care about job
    # bookkeeping can switch that off.
    validate_file_ids: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merge(self, patch: dict[str, Any]) -> None:
        """Apply a partial update. Unknown fields raise ValueError so a typo in a test is loud."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(patch) - known
        if unknown:
            raise ValueError(f"Unknown sandbox config field(s): {', '.join(sorted(unknown))}")
        for name, value in patch.items():
            if name == "limits":
                self._merge_limits(value)
            else:
                setattr(self, name, list(value) if isinstance(value, list) else value)

    def _merge_limits(self, patch: dict[str, Any]) -> None:
        if not isinstance(patch, dict):
            raise ValueError("limits must be an object keyed by endpoint kind")
        for kind, kind_patch in patch.items():
            if kind not in self.limits:
                raise ValueError(f"Unknown endpoint kind {kind!r}; expected one of {KINDS}")
            current = self.limits[kind]
            for name, value in kind_patch.items():
                if not hasattr(current, name):
                    raise ValueError(f"Unknown limit field {name!r}")
                setattr(current, name, value)
