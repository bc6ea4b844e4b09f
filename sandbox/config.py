"""Configuration of the sandbox upstream: what it limits, how it misbehaves, how fast jobs run.

Everything here can be changed at run time through `POST {prefix}/sandbox/control` (or
`SandboxState.configure`), so one running sandbox can play every scenario a test needs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

# The endpoint kinds Together limits separately; each has its own sliding windows.
KINDS: tuple[str, ...] = (
    "chat",
    "completions",
    "embeddings",
    "images",
    "rerank",
    "audio_speech",
    "audio_transcription",
)


@dataclass
class KindLimits:
    """Request limits of one endpoint kind, per API key. None means unlimited."""

    requests_per_second: int | None = None
    requests_per_minute: int | None = None


ENFORCEMENTS = ("window", "cushion")


@dataclass
class DynamicLimits:
    """Together's dynamic limits: per model (and per organisation), growing with recent success.

    When set on `SandboxConfig.dynamic`, these replace the per-kind `KindLimits`. Rates are per
    minute, as Together shows them; they are enforced per second (see sandbox/dynamic.py).
    """

    floor_per_minute: int = 60
    cap_per_minute: int = 1200
    # The trailing window whose successful traffic sets the rate: Together's hour; tests shrink it.
    window_seconds: float = 3600.0
    multiplier: float = 2.0
    # Token limits work the same way; off while tokens_floor_per_minute is None.
    tokens_floor_per_minute: int | None = None
    tokens_cap_per_minute: int | None = None
    # Static caps per minute by model name or fnmatch glob ("black-forest-labs/FLUX*").
    model_caps: dict[str, int] = field(default_factory=dict)
    # Floors per minute by model name or glob, instead of floor_per_minute for the models they
    # match (the tightest wins): a new organisation's embeddings start lower than its chat.
    model_floors: dict[str, int] = field(default_factory=dict)
    # Chance that a request admitted at or below the rate fails with 503 (Together's capacity).
    capacity_503_rate: float = 0.0
    # Together limits per organisation: by default every bearer key shares one budget per model.
    per_key: bool = False
    # How the per-second request limit is enforced (sandbox/dynamic.py): "window", a strict
    # 1 s sliding window (at most ceil(rate / 60) in any second); or "cushion", a bucket of
    # one second's requests refilling at the rate (GCRA), Together's "burst cushion".
    enforcement: str = "window"

    def __post_init__(self) -> None:
        # Loud on nonsense, so a scenario cannot silently run with a limit of zero.
        positive = {
            "floor_per_minute": self.floor_per_minute,
            "cap_per_minute": self.cap_per_minute,
            "window_seconds": self.window_seconds,
            "multiplier": self.multiplier,
            **{f"model_caps[{name!r}]": cap for name, cap in self.model_caps.items()},
            **{f"model_floors[{name!r}]": floor for name, floor in self.model_floors.items()},
        }
        if self.tokens_floor_per_minute is not None:
            positive["tokens_floor_per_minute"] = self.tokens_floor_per_minute
        if self.tokens_cap_per_minute is not None:
            positive["tokens_cap_per_minute"] = self.tokens_cap_per_minute
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"dynamic.{name} must be positive, not {value!r}")
        if self.tokens_cap_per_minute is not None and self.tokens_floor_per_minute is None:
            raise ValueError("dynamic.tokens_cap_per_minute needs tokens_floor_per_minute")
        if not 0 <= self.capacity_503_rate <= 1:
            raise ValueError("dynamic.capacity_503_rate must be between 0 and 1")
        if self.enforcement not in ENFORCEMENTS:
            raise ValueError(f"dynamic.enforcement must be one of {', '.join(ENFORCEMENTS)}")

    @property
    def limits_tokens(self) -> bool:
        return self.tokens_floor_per_minute is not None

    def model_cap(self, model: str) -> int | None:
        """The tightest static cap whose name or glob matches the model."""
        caps = [cap for pattern, cap in self.model_caps.items() if fnmatchcase(model, pattern)]
        return min(caps) if caps else None

    def model_floor(self, model: str) -> int:
        """The floor of the tightest floor row matching the model, else floor_per_minute."""
        floors = [f for pattern, f in self.model_floors.items() if fnmatchcase(model, pattern)]
        return min(floors) if floors else self.floor_per_minute

    def request_rate(self, model: str, successes: int) -> int:
        """Requests per minute for a model that had `successes` in the trailing window.

        About `multiplier` times the recent successful rate, never below the floor; the caps win
        over the floor, as Together's 6-a-minute image models show.
        """
        recent = self.multiplier * successes * 60 / self.window_seconds
        rate = max(self.model_floor(model), math.floor(recent))
        model_cap = self.model_cap(model)
        return min(rate, self.cap_per_minute, rate if model_cap is None else model_cap)

    def token_rate(self, tokens: int) -> int | None:
        """Tokens per minute after `tokens` succeeded in the window; None when tokens are free."""
        if self.tokens_floor_per_minute is None:
            return None
        recent = self.multiplier * tokens * 60 / self.window_seconds
        rate = max(self.tokens_floor_per_minute, math.floor(recent))
        cap = self.tokens_cap_per_minute
        return rate if cap is None else min(rate, cap)


def _default_limits() -> dict[str, KindLimits]:
    return {kind: KindLimits() for kind in KINDS}


@dataclass
class SandboxConfig:
    # Auth: None accepts any non-empty bearer key; a value accepts only that key.
    api_key: str | None = None
    limits: dict[str, KindLimits] = field(default_factory=_default_limits)
    # Reported in x-tokenlimit-* headers only; Together shows it, the sandbox does not enforce it.
    tokens_per_second: int = 100_000
    # Together's dynamic per-model limits instead of `limits`; None keeps the per-kind limits.
    dynamic: DynamicLimits | None = None

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
    # Together refuses a whole embeddings request (400) when one input is too long.
    embedding_max_input_chars: int = 8192
    stream_chunk_delay_ms: float = 0.0
    # Accepted on top of the built-in catalogue (listed as chat models).
    extra_models: list[str] = field(default_factory=list)
    # GET /v1/models answers only once this is false again (a model list that hangs);
    # a caller that gives up meanwhile is counted in stats' model_lists.abandoned.
    hold_model_list: bool = False

    # Jobs run in accelerated time.
    fine_tune_seconds: float = 2.0
    batch_seconds: float = 2.0
    video_seconds: float = 2.0
    evaluation_seconds: float = 2.0
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
            elif name == "dynamic":
                self._merge_dynamic(value)
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

    def _merge_dynamic(self, patch: dict[str, Any] | None) -> None:
        """None turns the dynamic mode off; an object updates it (`{}` turns it on as is)."""
        if patch is None:
            self.dynamic = None
            return
        if not isinstance(patch, dict):
            raise ValueError("dynamic must be an object of DynamicLimits fields, or null")
        current = dataclasses.asdict(self.dynamic or DynamicLimits())
        unknown = set(patch) - set(current)
        if unknown:
            raise ValueError(f"Unknown dynamic limit field(s): {', '.join(sorted(unknown))}")
        # Rebuilt whole so __post_init__ checks the result; model_caps is replaced, not merged.
        self.dynamic = DynamicLimits(**{**current, **patch})
