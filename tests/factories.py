"""Small builders shared by unit tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from limiter.gateway.keys import KeyInfo
from limiter.upstream import Target


def key_info(**overrides: Any) -> KeyInfo:
    """A team key as the key cache holds it, with no database behind it."""
    info = KeyInfo(
        key_id="7",
        prefix="sk-sluice-abcdef",
        secret_hash="0" * 64,
        team_id=1,
        team_name="alpha",
        paused=False,
        expires_at=None,
        account_id="1",
        account_name="together",
        target=Target("1", "together", "http://127.0.0.1:9/v1", ""),
        config_version=1,
        fallbacks={},
        max_batch_requests=None,
    )
    return replace(info, **overrides)
