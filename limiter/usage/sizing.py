"""How big a call is: the one set of rules every part of Sluice sizes a call by.

A call's prompt is its text at about 4 characters a token (every string anywhere in
`messages`, `prompt`, `input` or `documents`); its completion is the `max_tokens` (or
`max_completion_tokens`) it asks for, 256 when it sets none, on the endpoints that
complete (chat, completions). An images call counts its images (`n`, 1 by default), an
embeddings call its inputs. The gateway holds a call's estimate against its token
limits and budgets until its usage is known (limiter/gateway/admission.py) and charges
a call Together reported nothing for by it (limiter/gateway/metering.py); a batch's
estimate is the sum of its lines' (limiter/jobs/estimates.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
DEFAULT_COMPLETION_TOKENS = 256  # reserved when a call sets no max_tokens (and a TPM limit applies)
# What a call may ask for where Sluice itself counts it (its token estimate, an image's
# price): more than any model serves, far less than would upset the limiter's arithmetic.
MAX_COMPLETION_TOKENS = 1_000_000
MAX_N = 128
COMPLETING = frozenset({"chat", "completions"})
# The audio kinds: counted in `units` (characters of speech input, seconds of audio heard),
# no tokens (limiter/gateway/audio.py measures them).
AUDIO = frozenset({"audio_speech", "audio_transcription"})


def _count(value: Any) -> int | None:
    """A count a caller chose: a non-negative integer (not a boolean), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def text_size(value: Any) -> int:
    """Characters of text anywhere in `value`. A loop, not recursion: a caller's body
    decides how deep it goes (the gateway bounds it too)."""
    size, stack = 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            size += len(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    return size


def tokens_of_text(characters: int) -> int:
    return math.ceil(characters / CHARS_PER_TOKEN)


def estimate_parts(body: dict[str, Any], endpoint: str) -> tuple[int, int]:
    """Prompt tokens (about 4 characters a token) and the completion it may produce."""
    prompt = text_size(
        body.get("messages") or body.get("prompt") or body.get("input") or body.get("documents")
    )
    completion = 0
    if endpoint in COMPLETING:
        asked = body.get("max_tokens") or body.get("max_completion_tokens")
        # The gateway bounds it before this (inference.COUNTED_FIELDS); a body that comes
        # another way (a batch's lines) gets no unbounded number into the limiter either.
        completion = min(_count(asked) or DEFAULT_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS)
    return tokens_of_text(prompt), completion


def estimate_tokens(body: dict[str, Any], endpoint: str) -> float:
    """Prompt size plus the completion it may produce: what a token limit, and a token
    budget, hold for the call until it is answered."""
    prompt, completion = estimate_parts(body, endpoint)
    return prompt + completion


def image_count(body: dict[str, Any]) -> int:
    """The images an images call asks for: `n`, 1 when unset or not a positive integer."""
    n = _count(body.get("n"))
    return min(n, MAX_N) if n else 1


def input_count(body: dict[str, Any]) -> int:
    """The inputs of an embeddings call: a list's items, else 1."""
    inputs = body.get("input")
    return len(inputs) if isinstance(inputs, list) else 1


def completion_cap(body: dict[str, Any]) -> int | None:
    """The completion bound the caller set (per choice, times `n`), None when unset."""
    most = body.get("max_tokens")
    if most is None:
        most = body.get("max_completion_tokens")
    most = _count(most)
    if most is None:
        return None
    n = _count(body.get("n"))
    return most * (n if n and n > 1 else 1)


@dataclass(frozen=True, slots=True)
class Size:
    """A call's size, worked out once: `prompt` and `completion` tokens as estimated,
    `units` its images (images) or inputs (embeddings), `cap` the completion bound the
    caller set (None: unset)."""

    prompt: int = 0
    completion: int = 0
    units: int = 0
    cap: int | None = None

    @property
    def tokens(self) -> float:
        return float(self.prompt + self.completion)


def measure(body: dict[str, Any], endpoint: str) -> Size:
    """The size of a call of `endpoint` with `body`."""
    prompt, completion = estimate_parts(body, endpoint)
    units = 0
    if endpoint == "images":
        units = image_count(body)
    elif endpoint == "embeddings":
        units = input_count(body)
    return Size(prompt, completion, units, completion_cap(body))
