"""Deterministic stand-ins for model output: same input, same bytes, so tests can assert.

Words count as tokens throughout, which is close enough for quota arithmetic in tests.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

# A valid 1x1 transparent PNG, the smallest image a client can decode.
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
TINY_PNG_B64 = base64.b64encode(TINY_PNG).decode()

# Cap on generated words so an enormous max_tokens cannot make the sandbox allocate wildly.
MAX_COMPLETION_WORDS = 4096


def count_words(text: str) -> int:
    return len(text.split())


def message_text(messages: list[Any]) -> str:
    """All text in a chat `messages` list, including OpenAI-style content parts."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return " ".join(parts)


def completion_words(prompt: str, max_tokens: int) -> list[str]:
    """Exactly `max_tokens` words: an echo of the prompt's start, padded with filler."""
    seed = ["Sandbox", "reply", "to:", *prompt.split()[:8]]
    count = max(0, min(max_tokens, MAX_COMPLETION_WORDS))
    filler = ("lorem", "ipsum", "dolor", "sit", "amet")
    return [seed[i] if i < len(seed) else filler[i % len(filler)] for i in range(count)]


def embedding(text: str) -> list[float]:
    """Eight floats in [-1, 1] derived from the text's hash."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest[:8]]


def relevance(query: str, document: str) -> float:
    """Share of query words in the document, nudged by a hash so ties still order stably."""
    words = set(query.lower().split())
    doc_words = set(document.lower().split())
    overlap = len(words & doc_words) / len(words) if words else 0.0
    jitter = hashlib.sha256(f"{query}\x00{document}".encode()).digest()[0] / 25_500
    return round(min(1.0, overlap * 0.98 + jitter), 6)
