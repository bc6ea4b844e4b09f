"""Whose code interpreter session is whose: recorded as a session starts (the handler
against the sandbox over HTTP), and forgotten a day later, when another session starts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from limiter.gateway import tci
from limiter.gateway.context import Handles
from limiter.gateway.http import Request
from limiter.gateway.sink import RefusalSink
from limiter.models import ManagedObject
from tests.jobs.conftest import call, request

pytestmark = pytest.mark.django_db(transaction=True)

RUN = {"code": "x = 1", "language": "python"}


class Reports:
    """The limiter client's usage reports (the budget book's side of a started session)."""

    def __init__(self) -> None:
        self.usage: list[dict] = []

    def report_usage(self, **report: object) -> None:
        self.usage.append(report)


def execute(key, body: dict, reports: Reports | None = None) -> Request:  # type: ignore[no-untyped-def]
    """An execute as the team API hands it over: with the process's handles."""
    req = request(key, "POST", "/v1/tci/execute", body)
    req.handles = Handles(reports or Reports(), RefusalSink())  # type: ignore[arg-type]
    return req


def _owned() -> list[tuple[str, str]]:
    rows = ManagedObject.objects.filter(kind="code_interpreter").order_by("created_at")
    return [(row.team.name, row.object_id) for row in rows]


async def test_a_started_session_is_the_teams_and_a_reused_one_adds_nothing(make_key) -> None:
    alpha = await sync_to_async(make_key)("alpha")

    reports = Reports()
    status, first = await call(tci.execute, execute(alpha, RUN, reports))
    assert status == 200, first
    session = first["data"]["session_id"]
    status, again = await call(tci.execute, execute(alpha, {**RUN, "session_id": session}, reports))
    assert status == 200 and again["data"]["session_id"] == session

    assert await sync_to_async(_owned)() == [("alpha", session)]
    # The started session's price, reported once to the budget book; the reuse costs nothing.
    assert reports.usage == [
        {"key_id": alpha.key_id, "model": "together-code-interpreter", "tokens": 0.0, "cost": 0.03}
    ]


async def test_whose_a_session_was_is_forgotten_a_day_later(make_key) -> None:
    alpha = await sync_to_async(make_key)("alpha")
    _, old = await call(tci.execute, execute(alpha, RUN))
    _, recent = await call(tci.execute, execute(alpha, RUN))
    backdated = timezone.now() - tci.OWNERSHIP_KEPT - timedelta(minutes=1)
    await sync_to_async(ManagedObject.objects.filter(object_id=old["data"]["session_id"]).update)(
        created_at=backdated
    )

    _, new = await call(tci.execute, execute(alpha, RUN))

    assert await sync_to_async(_owned)() == [
        ("alpha", recent["data"]["session_id"]),
        ("alpha", new["data"]["session_id"]),
    ]
    # The forgotten one is an unknown session now: a 404 before Together hears of it.
    status, error = await call(
        tci.execute, execute(alpha, {**RUN, "session_id": old["data"]["session_id"]})
    )
    assert status == 404 and error["error"]["code"] == "not_found"
