"""The route table's websocket cells (tests/dashboard/test_route_table.py): the live
overview's websocket for every persona. Apart from the other cells, which run inside one
transaction made for their module, because these need transactions of their own (the
consumer reads the database from another thread)."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from dashboard.consumers import CLOSE_FORBIDDEN, LiveConsumer
from dashboard.models import TeamMembership
from limiter import serving
from limiter.services import team_get_or_create
from tests.dashboard.conftest import org_user
from tests.dashboard.test_route_table import (
    ADMIN,
    ANON,
    AUDITOR,
    NOROLE,
    OPERATOR,
    PERSONAS,
    TEAM_A_READERS,
    VIEWER,
)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("seeded_transactional_db")
@pytest.mark.parametrize("persona", PERSONAS)
async def test_websocket(persona, monkeypatch) -> None:
    """The live overview's websocket: open to every role; a team role gets its teams'
    rows only (tests/dashboard/test_shared_views.py)."""

    async def request_snapshot(reply: str) -> None:
        return None

    monkeypatch.setattr(serving, "request_snapshot", request_snapshot)

    def make_user() -> Any:
        if persona == ANON:
            return AnonymousUser()
        if persona in (AUDITOR, OPERATOR, ADMIN):
            return org_user(persona.replace(" ", "-"), persona)
        user = User.objects.create_user("member")
        if persona != NOROLE:
            team = team_get_or_create(name="team-a")[0]
            TeamMembership.objects.create(
                user=user, team=team, role="viewer" if persona == VIEWER else "maintainer"
            )
        return user

    user = await database_sync_to_async(make_user)()
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect()
    if persona in TEAM_A_READERS:
        assert connected
        assert (await communicator.receive_json_from(timeout=2))["type"] == "limits"
        await communicator.disconnect()
    else:
        assert not connected and code == CLOSE_FORBIDDEN
