"""The live websocket accepts a staff session only from this site's own origin (scheme,
host and port, as the request reached it) or one of CSRF_TRUSTED_ORIGINS. Channels'
host check ignored the port: a page on http://localhost:9999 could read the live view
with the staff member's cookie."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.servers import SluiceServer

TRUSTED = "https://ops.example.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with SluiceServer(
        tmp_path_factory.mktemp("ws"), env={"CSRF_TRUSTED_ORIGINS": TRUSTED}
    ) as sluice:
        yield sluice


@pytest.fixture(scope="module")
def session_cookie(server: SluiceServer) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/login/")
        response = client.post(
            "/login/",
            data={
                "username": server.admin_username,
                "password": server.admin_password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert response.status_code == 302
        return f"sessionid={client.cookies['sessionid']}"


async def first_message(server: SluiceServer, cookie: str, origin: str | None) -> dict:
    """Connect to the live view as the staff member would from `origin`; its first message."""
    url = server.url.replace("http://", "ws://") + "/ws/live/"
    async with connect(
        url, origin=origin, additional_headers={"cookie": cookie}, open_timeout=10
    ) as socket:
        return json.loads(await asyncio.wait_for(socket.recv(), 10))


@pytest.mark.parametrize("origin", ["own", TRUSTED])
async def test_accepted_from_its_own_or_a_trusted_origin(
    server: SluiceServer, session_cookie: str, origin: str
) -> None:
    message = await first_message(server, session_cookie, server.url if origin == "own" else origin)
    assert message["type"] == "limits"


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:9999",  # the same host name allowed, another port: another site
        "http://127.0.0.1:{other_port}",
        "https://127.0.0.1:{port}",  # another scheme
        "http://evil.example",
        "https://sub.ops.example.com",  # not covered by an exact trusted origin
        "null",
        None,
    ],
)
async def test_refused_from_any_other_origin(
    server: SluiceServer, session_cookie: str, origin: str | None
) -> None:
    port = server.ports[0]
    if origin is not None:
        origin = origin.format(port=port, other_port=port + 1)
    with pytest.raises(InvalidStatus) as refused:
        await first_message(server, session_cookie, origin)
    assert refused.value.response.status_code == 403
