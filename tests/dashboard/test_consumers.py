"""The live websocket: refused for anonymous and non-staff users, a snapshot on
connect (the limiter's reply faked on the consumer's channel), group events delivered."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from dashboard import live
from dashboard.consumers import CLOSE_FORBIDDEN, LiveConsumer
from limiter import serving
from limiter.jobs.ownership import broadcast_models_changed
from limiter.protocol import events
from limiter.services import key_issue, team_get_or_create, upstream_default
from tests.dashboard.conftest import org_user

ROOT = Path(__file__).resolve().parents[2]

# Transactional: the consumer reads the database from other threads. Every test asks
# for the seeded default profile, which the flush between transactional tests removes.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("seeded_transactional_db"),
]


def snapshot(key_id: str, account_id: str, admitted: int = 3) -> events.LiveSnapshot:
    def scope(kind: str, scope_id: str) -> events.ScopeSnapshot:
        return {
            "kind": kind,
            "id": scope_id,
            "endpoint": "chat",
            "limit_per_minute": 500.0,
            "burst": 5,
            "in_use": 1.5,
            "admitted_last_minute": admitted,
            "queued": 2,
            "longest_wait": 0.8,
            "leases": 1,
            "max_concurrent": None,
            "tokens_per_minute": None,
            "tokens_in_use": None,
            "paused_for": 0.0,
            "refused_last_minute": {"gateway": 1, "upstream": 0},
        }

    minute = int(time.time()) // 60 * 60
    return {
        "type": events.LIVE_SNAPSHOT,
        "at": time.time(),
        "limiter": {
            "started_at": time.time() - 10,
            "decisions": 7,
            "tickets_queued": 2,
            "leases": 1,
        },
        "scopes": [scope("key", key_id), scope("account", account_id)],
        "upstream_headers": {account_id: {"chat": {"x-ratelimit-remaining": "59"}}},
        "history": {"chat": [[minute, admitted, 2, 1]]},
    }


@pytest.fixture
def fake_limiter(monkeypatch):
    """Answers a snapshot request the way the limiter does: a LIVE_SNAPSHOT to the reply channel."""
    asked: list[str] = []
    state: dict = {}

    async def request_snapshot(reply: str) -> None:
        asked.append(reply)
        if "snapshot" in state:
            await get_channel_layer().send(reply, state["snapshot"])

    monkeypatch.setattr(serving, "request_snapshot", request_snapshot)
    live.names.clear()
    live.latest.snapshot = None
    return state, asked


@pytest.fixture
def ids(db):
    team, _ = team_get_or_create(name="search")
    key = key_issue(team=team).key
    return {"key": str(key.pk), "prefix": key.prefix, "account": str(upstream_default().pk)}


async def connect(user) -> tuple[WebsocketCommunicator, bool, int | None]:
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect()
    return communicator, connected, code


async def receive_type(communicator: WebsocketCommunicator, kind: str) -> dict:
    while True:
        message = await communicator.receive_json_from(timeout=2)
        if message["type"] == kind:
            return message


async def test_anonymous_refused(fake_limiter):
    communicator, connected, code = await connect(AnonymousUser())
    assert not connected and code == CLOSE_FORBIDDEN
    assert fake_limiter[1] == []


async def test_non_staff_refused(django_user_model, fake_limiter):
    user = await database_sync_to_async(django_user_model.objects.create_user)("dev", password="x")
    communicator, connected, code = await connect(user)
    assert not connected and code == CLOSE_FORBIDDEN


async def test_staff_gets_db_limits_then_snapshot_on_connect(django_user_model, fake_limiter, ids):
    state, asked = fake_limiter
    state["snapshot"] = snapshot(ids["key"], ids["account"])
    user = await database_sync_to_async(org_user)("ops", "operator")
    communicator, connected, _ = await connect(user)
    assert connected

    first = await communicator.receive_json_from(timeout=2)
    assert first["type"] == "limits"
    assert [t["name"] for t in first["limits"]["teams"]] == ["search"]
    assert {row["endpoint"] for row in first["limits"]["accounts"][0]["limits"]} >= {
        "chat",
        "embeddings",
    }

    jobs = await communicator.receive_json_from(timeout=2)
    assert jobs["type"] == "jobs"
    assert (
        jobs["accounts"][ids["account"]]["fine_tunes"]["total"] == 3
    )  # the seeded cap, nothing running

    second = await communicator.receive_json_from(timeout=2)
    assert second["type"] == "snapshot" and len(asked) == 1
    key_scope = next(s for s in second["scopes"] if s["kind"] == "key")
    account_scope = next(s for s in second["scopes"] if s["kind"] == "account")
    assert key_scope["team"] == "search" and key_scope["key_prefix"] == ids["prefix"]
    assert account_scope["account"] == "together"
    assert second["upstream_headers"] == {"together": {"chat": {"x-ratelimit-remaining": "59"}}}
    await communicator.disconnect()


async def test_group_snapshots_are_delivered(django_user_model, fake_limiter, ids):
    user = await database_sync_to_async(org_user)("ops", "operator")
    communicator, connected, _ = await connect(user)
    assert (await communicator.receive_json_from(timeout=2))["type"] == "limits"
    assert (await communicator.receive_json_from(timeout=2))["type"] == "jobs"

    await get_channel_layer().group_send(
        events.LIVE_GROUP, snapshot(ids["key"], ids["account"], admitted=42)
    )
    message = await communicator.receive_json_from(timeout=2)
    assert message["type"] == "snapshot"
    assert [s["admitted_last_minute"] for s in message["scopes"]] == [42, 42]
    assert live.latest.snapshot == message
    await communicator.disconnect()


async def test_new_key_is_named_after_a_reload(django_user_model, fake_limiter, ids):
    user = await database_sync_to_async(org_user)("ops", "operator")
    communicator, _, _ = await connect(user)
    await receive_type(communicator, "jobs")  # after the limits
    await get_channel_layer().group_send(events.LIVE_GROUP, snapshot(ids["key"], ids["account"]))
    await receive_type(communicator, "snapshot")

    team, _ = await database_sync_to_async(team_get_or_create)(name="ads")
    new_key = (await database_sync_to_async(key_issue)(team=team)).key
    # The key's save broadcasts a configuration change: the consumer sends fresh limits
    # and forgets its names, so the next snapshot names the new key.
    refreshed = await communicator.receive_json_from(timeout=2)
    assert refreshed["type"] == "limits" and {t["name"] for t in refreshed["limits"]["teams"]} == {
        "ads",
        "search",
    }
    await get_channel_layer().group_send(
        events.LIVE_GROUP, snapshot(str(new_key.pk), ids["account"])
    )
    message = await receive_type(communicator, "snapshot")  # after one "limits" per change
    assert next(s for s in message["scopes"] if s["kind"] == "key")["team"] == "ads"
    await communicator.disconnect()


async def test_refresh_and_limiter_restart_ask_for_a_snapshot(django_user_model, fake_limiter, ids):
    state, asked = fake_limiter
    state["snapshot"] = snapshot(ids["key"], ids["account"])
    user = await database_sync_to_async(org_user)("ops", "operator")
    communicator, _, _ = await connect(user)
    await receive_type(communicator, "snapshot")

    await communicator.send_json_to({"type": "refresh"})
    await receive_type(communicator, "snapshot")
    await get_channel_layer().group_send(events.CONFIG_GROUP, {"type": events.LIMITER_STARTED})
    await receive_type(communicator, "snapshot")
    assert len(asked) == 3
    await communicator.disconnect()


async def test_new_fine_tuned_models_keep_the_socket_open(django_user_model, fake_limiter, ids):
    """Recording a fine-tune's model broadcasts MODELS_CHANGED to the configuration group
    the consumer joins: the page has nothing to show for it, but the socket must stay open
    (it was closed 1011, "No handler for message type models.changed")."""
    user = await database_sync_to_async(org_user)("ops", "operator")
    communicator, _, _ = await connect(user)
    await receive_type(communicator, "jobs")

    await database_sync_to_async(broadcast_models_changed)()
    await get_channel_layer().group_send(
        events.LIVE_GROUP, snapshot(ids["key"], ids["account"], admitted=9)
    )
    message = await receive_type(communicator, "snapshot")
    assert [s["admitted_last_minute"] for s in message["scopes"]] == [9, 9]
    await communicator.disconnect()


def group_sends() -> list[tuple[str, str, int, str, str]]:
    """Every `group_send(<group constant>, {"type": <constant>, ...})` in the source:
    (file, line, group constant, event constant or "" when the message is not a literal)."""
    found = []
    for root in ("limiter", "dashboard", "sandbox"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and len(node.args) == 2):
                    continue
                func = node.func
                if isinstance(func, ast.Call) and func.args:  # async_to_sync(layer.group_send)
                    func = func.args[0]
                if not (isinstance(func, ast.Attribute) and func.attr == "group_send"):
                    continue
                group, message = node.args
                assert isinstance(group, (ast.Name, ast.Attribute)), (path, node.lineno)
                group_name = group.id if isinstance(group, ast.Name) else group.attr
                kind = ""
                if isinstance(message, ast.Dict):
                    for key, value in zip(message.keys, message.values, strict=True):
                        if isinstance(key, ast.Constant) and key.value == "type":
                            assert isinstance(value, (ast.Name, ast.Attribute)), (path, node.lineno)
                            kind = value.id if isinstance(value, ast.Name) else value.attr
                found.append((str(path.relative_to(ROOT)), node.lineno, group_name, kind))
    return found


def test_every_group_send_names_a_declared_event():
    """events.GROUP_EVENTS is what each group carries: a literal message sent to a group
    must be one of its declared types (a new one has to be declared, and so handled)."""
    sends = group_sends()
    assert {group for _, _, group, _ in sends} == {"LIVE_GROUP", "CONFIG_GROUP"}
    for path, line, group, kind in sends:
        if kind:
            assert getattr(events, kind) in events.GROUP_EVENTS[getattr(events, group)], (
                path,
                line,
            )


def test_the_consumer_handles_every_event_of_the_groups_it_joins():
    for group in LiveConsumer.JOINED_GROUPS:
        for kind in events.GROUP_EVENTS[group]:
            handled = callable(getattr(LiveConsumer, get_handler_name({"type": kind}), None))
            assert handled or kind in LiveConsumer.IGNORED_EVENTS, kind
