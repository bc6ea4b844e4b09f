"""The sandbox mode (`make run` without a Together key): the simulated Together is mounted
at /sandbox/ on Sluice's own port and is Sluice's upstream. Sluice keeps teams apart, so
its upstream must not be reachable around it.

Its own server: the rest of the package runs the sandbox in a thread, on another port.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import SluiceServer


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    # No TOGETHER_BASE_URL: `serve` points the upstream at its own /sandbox/ mount.
    with SluiceServer(
        Path(tmp_path_factory.mktemp("demo")), env={"TOGETHER_BASE_URL": ""}
    ) as server:
        yield server


def test_a_teams_file_is_not_readable_around_sluice(demo_server: SluiceServer) -> None:
    owner = httpx.Client(
        base_url=demo_server.url,
        timeout=30,
        headers={"authorization": f"Bearer {demo_server.issue_key('iso-b')}"},
    )
    uploaded = owner.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("b.jsonl", b'{"text": "b"}\n')}
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    assert (
        httpx.get(f"{demo_server.url}/v1/files/{file_id}/content").status_code == 401
    )  # Sluice says no

    around = httpx.get(
        f"{demo_server.url}/sandbox/v1/files/{file_id}/content",
        headers={"authorization": "Bearer anything"},
        timeout=30,
    )

    assert around.status_code == 401, around.content
    owner.close()


def test_a_video_reaches_the_mounted_sandbox_under_v2_and_not_around_sluice(
    demo_server: SluiceServer,
) -> None:
    """`make run`'s upstream is <Sluice>/sandbox/v1: a video job goes to the /v2/ beside
    it (limiter/upstream.py Target.url), and is not readable there around Sluice."""
    owner = httpx.Client(
        base_url=demo_server.url,
        timeout=30,
        headers={"authorization": f"Bearer {demo_server.issue_key('iso-video')}"},
    )
    created = owner.post(
        "/v2/videos", json={"model": "minimax/video-01-director", "prompt": "a sluice"}
    )
    assert created.status_code == 200, created.text
    upstream_id = created.json()["sluice"]["upstream_id"]
    assert upstream_id, created.json()  # started upstream, at the mounted sandbox

    around = httpx.get(
        f"{demo_server.url}/sandbox/v2/videos/{upstream_id}",
        headers={"authorization": "Bearer anything"},
        timeout=30,
    )

    assert around.status_code == 401, around.content
    owner.close()
