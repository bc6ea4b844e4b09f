"""Amounts over real HTTP, on SQLite and PostgreSQL (issue 18, item 5).

A budget limit of "99999999999999.9999999" passed the ops API's schema; SQLite kept it as a
double that does not read back into the field, and from then on the budget's list, its
delete, the team page and the limiter's configuration reload failed: another team's
1-token budget was ignored. Now an amount the column cannot keep exactly is a 400 naming
the field, and a stored one that cannot be read (written before, or by hand) is skipped by
the limiter with an error in the log and an alert, while the other budgets hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from tests.alerts.helpers import staff_session
from tests.conftest import POSTGRES_URL, need, reachable
from tests.databases import postgres_database
from tests.servers import SluiceServer
from tests.waiting import wait_until

CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
# What each database keeps of the issue's value when written past the checks: SQLite
# rounds the text to a double (1e14, one digit past the field); PostgreSQL's numeric(20, 6)
# refuses it, but keeps a NaN.
UNREADABLE = {"sqlite": "99999999999999.9999999", "postgres": "NaN"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(request, tmp_path_factory) -> Iterator[tuple[str, SluiceServer]]:
    tmp = tmp_path_factory.mktemp(f"amounts-{request.param}")
    if request.param == "sqlite":
        with SluiceServer(tmp) as server:
            yield request.param, server
        return
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    with (
        postgres_database(POSTGRES_URL, prefix="sluice_amounts") as url,
        SluiceServer(tmp, env={"DATABASE_URL": url}) as server,
    ):
        yield request.param, server


@pytest.fixture
def server(database) -> SluiceServer:
    return database[1]


@pytest.fixture
def ops(server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    ) as client:
        yield client


def team_id(ops: httpx.Client, name: str) -> int:
    return next(t["id"] for t in ops.get("/teams").json() if t["name"] == name)


def chat(server: SluiceServer, key: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        timeout=30,
    )


def assert_one_token_budget_holds(server: SluiceServer, ops: httpx.Client, team: str) -> None:
    """A new 1-token budget on `team` is in force: one call goes through, the next is
    refused with budget_exceeded (the limiter reloaded its budgets with it)."""
    key = server.issue_key(team)
    made = ops.post(
        f"/teams/{team_id(ops, team)}/budgets",
        json={"unit": "tokens", "period": "day", "limit": 1},
    )
    assert made.status_code == 201, made.text
    assert chat(server, key).status_code == 200
    refused = chat(server, key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"


def write_past_the_checks(server: SluiceServer, table: str, column: str, pk: int, value: str):
    server.python(
        "from django.db import connection\n"
        "with connection.cursor() as cursor:\n"
        f"    cursor.execute('UPDATE {table} SET \"{column}\" = %s WHERE id = %s', "
        f"[{value!r}, {pk}])\n"
    )


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # The issue's value: 7 places, 21 digits.
        ("budgets", {"limit": "99999999999999.9999999"}, "limit"),
        # 6 places, 20 digits: within numeric(20, 6), but SQLite's double keeps 15.
        ("budgets", {"limit": "99999999999999.999999"}, "limit"),
        ("budgets", {"limit": 12345678901234.56}, "limit"),
        ("budgets", {"limit": "0.0000001"}, "limit"),  # 7 places
        ("budgets", {"limit": "100000000000000"}, "limit"),  # 15 digits before the point
        ("prices", {"override_input": "9999999999.999999"}, "override_input"),
        ("prices", {"image_price": "0.1234567"}, "image_price"),
    ],
)
def test_an_amount_the_database_cannot_keep_exactly_is_a_400(
    server, ops, path: str, body: dict, field: str
) -> None:
    if path == "budgets":
        team = ops.post("/teams", json={"name": f"amounts-{uuid.uuid4().hex[:8]}"}).json()["id"]
        response = ops.post(
            f"/teams/{team}/budgets", json={"unit": "tokens", "period": "day", **body}
        )
    else:
        response = ops.post("/prices", json={"model": "org/amounts", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error


def test_the_largest_amounts_kept_read_back_exactly(server, ops) -> None:
    team = ops.post("/teams", json={"name": "amounts-largest"}).json()["id"]
    for limit in ("99999999999999.9", "123456789.123456", "0.000001"):
        made = ops.post(
            f"/teams/{team}/budgets", json={"unit": "dollars", "period": "day", "limit": limit}
        )
        assert made.status_code == 201, made.text
        assert Decimal(made.json()["limit"]) == Decimal(limit)
    listed = ops.get(f"/teams/{team}/budgets")
    assert listed.status_code == 200, listed.text
    assert sorted(Decimal(b["limit"]) for b in listed.json()) == sorted(
        Decimal(v) for v in ("99999999999999.9", "123456789.123456", "0.000001")
    )
    price = ops.post(
        "/prices", json={"model": "org/largest", "override_output": "9999999999.99999"}
    )
    assert price.status_code == 200, price.text
    assert Decimal(price.json()["override_output"]) == Decimal("9999999999.99999")


def test_the_issues_value_leaves_other_budgets_in_force(server, ops) -> None:
    team = ops.post("/teams", json={"name": "amounts-issue"}).json()["id"]
    response = ops.post(
        f"/teams/{team}/budgets",
        json={"unit": "tokens", "period": "day", "limit": "99999999999999.9999999"},
    )
    assert response.status_code == 400, response.text
    assert ops.get(f"/teams/{team}/budgets").status_code == 200
    price = ops.post(
        "/prices", json={"model": "org/issue", "override_input": "99999999999.9999999"}
    )
    assert price.status_code == 400, price.text
    assert ops.get("/prices").status_code == 200
    assert_one_token_budget_holds(server, ops, "amounts-other")


def test_a_stored_limit_that_cannot_be_read_is_skipped_and_alerted(database, ops) -> None:
    kind, server = database
    team = ops.post("/teams", json={"name": "amounts-broken"}).json()["id"]
    made = ops.post(
        f"/teams/{team}/budgets", json={"unit": "tokens", "period": "day", "limit": 1000}
    )
    assert made.status_code == 201, made.text
    broken = made.json()["id"]
    write_past_the_checks(server, "usage_budget", "limit", broken, UNREADABLE[kind])

    # The limiter reloads its budgets (the new budget's save broadcasts), skips the
    # unreadable one, and enforces the new one.
    assert_one_token_budget_holds(server, ops, "amounts-bystander")
    assert f"budget {broken}" in server.log() and "cannot be read" in server.log()

    # The team's budgets, the team page and the Alerts page still answer; ops can
    # remove it.
    listed = ops.get(f"/teams/{team}/budgets")
    assert listed.status_code == 200, listed.text
    assert [b["id"] for b in listed.json()] == []
    with staff_session(server) as staff:
        page = staff.get(f"/teams/{team}/")
        assert page.status_code == 200
        assert f'data-budget="{broken}"' in page.text and "cannot be read" in page.text

        def alerted() -> bool:
            alerts = staff.get("/alerts/")
            return f'data-condition="amount_unreadable:budget:{broken}"' in alerts.text

        wait_until(alerted, what="the unreadable budget's alert", within=20)
    assert ops.delete(f"/budgets/{broken}").status_code == 204
    assert ops.get(f"/teams/{team}/budgets").status_code == 200


def test_a_stored_price_that_cannot_be_read_is_skipped_and_alerted(database, ops) -> None:
    kind, server = database
    made = ops.post("/prices", json={"model": "org/broken-price", "override_input": "1.5"})
    assert made.status_code == 200, made.text
    pk = int(
        server.python(
            "from limiter.usage.models import ModelPrice\n"
            "print(ModelPrice.objects.get(model='org/broken-price').pk)"
        )
    )
    write_past_the_checks(server, "usage_modelprice", "override_input", pk, UNREADABLE[kind])

    # Another override broadcasts: every web process reloads its prices, skipping that row.
    assert ops.post("/prices", json={"model": "org/fine", "override_input": "1"}).status_code == 200
    with staff_session(server) as staff:

        def alerted() -> bool:
            alerts = staff.get("/alerts/")
            return f'data-condition="amount_unreadable:price:{pk}"' in alerts.text

        wait_until(alerted, what="the unreadable price's alert", within=20)
    assert f"price {pk}" in server.log() and "cannot be read" in server.log()
    listed = ops.get("/prices")
    assert listed.status_code == 200, listed.text
    assert "org/broken-price" not in [p["model"] for p in listed.json()]
    # Setting the override again repairs the row.
    again = ops.post("/prices", json={"model": "org/broken-price", "override_input": "2"})
    assert again.status_code == 200, again.text
    assert Decimal(again.json()["override_input"]) == 2
    assert_one_token_budget_holds(server, ops, "amounts-after-price")
