"""Where a path goes on an upstream account: under its base URL (Together's /v1), except
the together SDK's /v2/ paths (video jobs), which are under the root that /v1 is in."""

from __future__ import annotations

import pytest

from limiter.upstream import Target


@pytest.mark.parametrize(
    ("base", "path", "url"),
    [
        (
            "https://api.together.xyz/v1",
            "/chat/completions",
            "https://api.together.xyz/v1/chat/completions",
        ),
        ("https://api.together.xyz/v1/", "/v2/videos", "https://api.together.xyz/v2/videos"),
        ("http://127.0.0.1:9/sandbox/v1", "/v2/videos/x", "http://127.0.0.1:9/sandbox/v2/videos/x"),
        # A base URL not ending in /v1 is taken as given: nothing to swap.
        (
            "http://proxy.internal/together",
            "/v2/videos",
            "http://proxy.internal/together/v2/videos",
        ),
    ],
)
def test_v2_paths_go_under_the_root_of_the_v1_base(base: str, path: str, url: str) -> None:
    assert Target("1", "together", base, "secret").url(path) == url
