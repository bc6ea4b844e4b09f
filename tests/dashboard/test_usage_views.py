"""The Usage page and its CSV, and the team page's budgets: access, filters, validation
(form errors, never a 500), formula-safe CSV with the table's own rows, days in the
usage time zone, each team's usage under its own name only, one query per figure."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse
from django.utils import timezone

from dashboard.forms import MSG_DAY_BOUNDS, MSG_DAY_RANGE, MSG_DAYS, USAGE_MAX_DAYS
from limiter.usage.models import Budget, UsageRollup

pytestmark = pytest.mark.django_db

USAGE = reverse("dashboard:usage")
CSV = reverse("dashboard:usage_csv")
LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
BGE = "BAAI/bge-base-en-v1.5"


def rollup(team, minute: datetime, *, model: str = LLAMA, endpoint: str = "chat", **counts):
    """One writer's minute of usage, as the recorder writes it."""
    prompt, completion = counts.pop("prompt", 10), counts.pop("completion", 5)
    return UsageRollup.objects.create(
        writer=counts.pop("writer", "w1"),
        minute=minute,
        team=team,
        team_name=counts.pop("team_name", team.name if team else ""),
        key_prefix=counts.pop("key_prefix", "sk-sluice-aaaaaa"),
        upstream="together",
        endpoint=endpoint,
        model=model,
        status_class=counts.pop("status_class", "2xx"),
        requests=counts.pop("requests", 1),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost=counts.pop("cost", Decimal("0.0000123456")),
        **counts,
    )


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


class _Table(HTMLParser):
    """The rows of `#usage`'s body as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_table = self._in_body = self._in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("id", "usage") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append([])
        elif self._in_body and tag == "td":
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._in_table = False
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1][-1] += data.strip()


def table_rows(html: str) -> list[list[str]]:
    parser = _Table()
    parser.feed(html)
    return parser.rows


def chart(response) -> dict:
    return response.context["chart"]


def read_csv(response) -> list[list[str]]:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return list(csv.reader(io.StringIO(async_to_sync(collect)().decode())))


# --- access ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [USAGE, CSV])
def test_anonymous_is_sent_to_log_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("path", [USAGE, CSV])
def test_non_staff_is_forbidden(outsider_client, team, path):
    rollup(team, timezone.now())
    response = outsider_client.get(path)
    assert response.status_code == 403
    assert team.name.encode() not in response.content


def test_the_page_is_in_the_nav(staff_client):
    response = staff_client.get(reverse("dashboard:overview"))
    assert f'href="{USAGE}"'.encode() in response.content
    page = staff_client.get(USAGE)
    assert b'aria-current="page">Usage<' in page.content


# --- the default view, and what the database is asked --------------------------------------
def test_default_is_the_last_30_days_per_day_and_team(staff_client, team, other_team):
    now = timezone.now()
    rollup(team, now, prompt=100, completion=20, cost=Decimal("0.5"))
    rollup(team, now, writer="w2", prompt=1, completion=2, cost=Decimal("0.25"))  # summed
    rollup(other_team, now - timedelta(days=1), prompt=7, completion=3, cost=Decimal("0.1"))
    rollup(team, now - timedelta(days=45), prompt=999, completion=1)  # before the range

    response = staff_client.get(USAGE)

    assert response.status_code == 200
    today = now.date()
    assert response.context["form"]["start"].value() == str(today - timedelta(days=29))
    assert response.context["form"]["end"].value() == str(today)
    rows = table_rows(response.content.decode())
    assert rows == [
        [str(today), "search", "2", "0", "101", "22", "123", "0.750000"],
        [str(today - timedelta(days=1)), "ads", "1", "0", "7", "3", "10", "0.100000"],
    ]
    assert "999" not in response.content.decode()
    total = response.context["total"]
    assert (total["total_tokens"], total["cost"]) == (133, Decimal("0.85"))
    # The chart: a point a day over the 30 days, a line per team, in dollars.
    drawn = chart(response)
    assert len(drawn["x"]) == 30 and drawn["metric"] == "cost"
    assert {s["label"]: s["values"][-1] for s in drawn["series"]} == {"search": 0.75, "ads": 0.0}
    assert {s["label"]: s["values"][-2] for s in drawn["series"]} == {"search": 0.0, "ads": 0.1}


def test_queries_do_not_grow_with_the_rows(
    staff_client, team, other_team, django_assert_max_num_queries
):
    """Sums come from the database in a few GROUP BYs, never a query per row."""
    start = at("2026-03-01")
    for day in range(20):
        for owner in (team, other_team):
            for model in (LLAMA, BGE):
                rollup(owner, start + timedelta(days=day), model=model)
    params = {"start": "2026-03-01", "end": "2026-03-31", "group_by": ["day", "team", "model"]}
    # session, user, the user's role, teams, models, table, total, chart
    with django_assert_max_num_queries(9):
        response = staff_client.get(USAGE, params)
    assert len(table_rows(response.content.decode())) == 80


# --- filters -----------------------------------------------------------------------------
def test_filters_narrow_the_table_chart_and_totals(staff_client, team, other_team):
    rollup(team, at("2026-03-02"), model=LLAMA, key_prefix="sk-sluice-search")
    rollup(team, at("2026-03-03"), model=BGE, endpoint="embeddings", prompt=40, completion=0)
    rollup(team, at("2026-03-20"), model=LLAMA)  # after the range
    rollup(other_team, at("2026-03-02"), model=LLAMA, key_prefix="sk-sluice-adsads")

    base = {"start": "2026-03-01", "end": "2026-03-10"}
    by_team = staff_client.get(USAGE, {**base, "team": "search", "group_by": "model"})
    assert table_rows(by_team.content.decode()) == [
        [BGE, "1", "0", "40", "0", "40", "0.000012"],  # the same cost: by name
        [LLAMA, "1", "0", "10", "5", "15", "0.000012"],
    ]
    assert "ads" not in by_team.content.decode().split('id="usage"')[1]

    embeddings = staff_client.get(USAGE, {**base, "endpoint": "embeddings", "group_by": "team"})
    assert table_rows(embeddings.content.decode()) == [
        ["search", "1", "0", "40", "0", "40", "0.000012"]
    ]

    one_model = staff_client.get(USAGE, {**base, "model": LLAMA, "group_by": ["team", "key"]})
    assert sorted(table_rows(one_model.content.decode())) == [
        ["ads", "sk-sluice-adsads", "1", "0", "10", "5", "15", "0.000012"],
        ["search", "sk-sluice-search", "1", "0", "10", "5", "15", "0.000012"],
    ]
    one_key = staff_client.get(
        USAGE, {**base, "key_prefix": "sk-sluice-adsads", "group_by": "team"}
    )
    assert [row[0] for row in table_rows(one_key.content.decode())] == ["ads"]

    # The chart counts tokens when asked, a line per model, over exactly the days chosen.
    tokens = staff_client.get(
        USAGE, {**base, "team": "search", "group_by": "model", "metric": "tokens"}
    )
    drawn = chart(tokens)
    assert drawn["metric"] == "tokens" and len(drawn["x"]) == 10
    assert drawn["x"][0] == int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    series = {s["label"]: s["values"] for s in drawn["series"]}
    assert series[LLAMA][1] == 15 and series[BGE][2] == 40 and sum(series[LLAMA]) == 15


def test_group_by_status_class_shows_togethers_errors_apart(staff_client, team):
    rollup(team, at("2026-03-01"), requests=3)
    rollup(team, at("2026-03-01"), status_class="4xx", prompt=0, completion=0, cost=0)
    response = staff_client.get(
        USAGE, {"start": "2026-03-01", "end": "2026-03-01", "group_by": ["team", "status"]}
    )
    assert table_rows(response.content.decode()) == [
        ["search", "2xx", "3", "0", "10", "5", "15", "0.000012"],
        ["search", "4xx", "1", "0", "0", "0", "0", "0.000000"],
    ]
    _header, *lines = read_csv(
        staff_client.get(CSV, {"start": "2026-03-01", "end": "2026-03-01", "group_by": "status"})
    )
    assert [line[0] for line in lines] == ["2xx", "4xx"]


def test_days_are_the_usage_time_zones(staff_client, team, settings):
    settings.SLUICE_USAGE_TIME_ZONE = "America/New_York"
    # 03:00 UTC on 2 March is 22:00 on 1 March in New York.
    rollup(team, at("2026-03-02", hour=3))
    response = staff_client.get(USAGE, {"start": "2026-03-01", "end": "2026-03-01"})
    assert [row[0] for row in table_rows(response.content.decode())] == ["2026-03-01"]
    assert chart(response)["zone"] == "America/New_York"
    nothing = staff_client.get(USAGE, {"start": "2026-03-02", "end": "2026-03-02"})
    assert table_rows(nothing.content.decode())[0][0] == "No usage matches these filters."


def test_many_series_keep_the_biggest_and_sum_the_rest(staff_client, team):
    for i in range(11):
        rollup(team, at("2026-03-01"), model=f"org/model-{i:02}", cost=Decimal(i + 1))
    response = staff_client.get(
        USAGE, {"start": "2026-03-01", "end": "2026-03-01", "group_by": "model"}
    )
    labels = [s["label"] for s in chart(response)["series"]]
    assert labels[:2] == ["org/model-10", "org/model-09"] and labels[-1] == "3 others"
    assert chart(response)["series"][-1]["values"] == [6.0]  # 1 + 2 + 3 dollars
    assert len(table_rows(response.content.decode())) == 11  # the table keeps every row


# --- validation: form errors, never a 500 ---------------------------------------------------
@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"start": "2026-03-10", "end": "2026-03-01"}, "end", MSG_DAYS),
        ({"start": "2026-13-01"}, "start", "Enter a valid date."),
        ({"end": "yesterday"}, "end", "Enter a valid date."),
        ({"start": "0001-01-01", "end": "0001-01-02"}, "start", MSG_DAY_BOUNDS[:20]),
        ({"start": "9999-12-30", "end": "9999-12-31"}, "start", MSG_DAY_BOUNDS[:20]),
        (
            {"start": "2000-01-01", "end": "2099-12-31"},
            "start",
            MSG_DAY_RANGE.format(days=USAGE_MAX_DAYS),
        ),
        ({"team": "no-such-team"}, "team", "Select a valid choice."),
        ({"endpoint": "shell"}, "endpoint", "Select a valid choice."),
        ({"group_by": ["day", "password"]}, "group_by", "Select a valid choice."),
        ({"metric": "pounds"}, "metric", "Select a valid choice."),
        ({"model": "m" * 201}, "model", "at most 200 characters"),
    ],
)
def test_bad_filters_are_form_errors(staff_client, team, params, field, message):
    rollup(team, timezone.now())
    response = staff_client.get(USAGE, params)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field]), errors
    body = response.content.decode()
    assert 'class="errorlist' in body and 'id="no-report"' in body
    assert 'id="usage"' not in body and 'id="csv"' not in body
    # The CSV of the same query goes back to the page, which shows the errors.
    download = staff_client.get(CSV, params)
    assert download.status_code == 302
    assert download["Location"].startswith(USAGE + "?")
    assert staff_client.get(download["Location"]).context["form"].errors == errors


def test_a_lone_last_day_shows_the_30_days_before_it(staff_client):
    response = staff_client.get(USAGE, {"end": "2026-03-31"})
    assert response.context["query"].first_day == date(2026, 3, 2)


# --- CSV ---------------------------------------------------------------------------------
def test_csv_has_the_tables_rows_in_its_order(staff_client, team, other_team):
    for day in ("2026-03-01", "2026-03-02"):
        rollup(team, at(day), cost=Decimal("0.0000123456"))
        rollup(other_team, at(day), model=BGE, cost=Decimal("1.5"))
    params = {"start": "2026-03-01", "end": "2026-03-05", "group_by": ["day", "team", "model"]}
    page = staff_client.get(USAGE, params)
    download = staff_client.get(CSV, params)

    assert download.status_code == 200 and download.streaming
    assert download["Content-Type"].startswith("text/csv")
    assert 'filename="sluice-usage-20260301-20260305.csv"' in download["Content-Disposition"]
    header, *rows = read_csv(download)
    assert header == [
        "day",
        "team",
        "model",
        "requests",
        "units",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
    ]
    assert rows[0] == ["2026-03-02", "ads", BGE, "1", "0", "10", "5", "15", "1.5000000000"]
    table = table_rows(page.content.decode())
    assert len(rows) == len(table) == 4
    for line, cells in zip(rows, table, strict=True):
        assert line[:-1] == cells[:-1]
        assert Decimal(line[-1]).quantize(Decimal("1e-6")) == Decimal(cells[-1])
    # The page's CSV link carries the filters in force, defaults included.
    assert "/usage.csv?" in page.content.decode() and "group_by=model" in page.content.decode()


@pytest.mark.parametrize(
    "cell", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]
)
def test_csv_cells_never_start_a_formula(staff_client, team, cell):
    team.name = cell
    team.save()
    rollup(team, at("2026-03-01"), model=cell, key_prefix=cell[:16])
    download = staff_client.get(
        CSV, {"start": "2026-03-01", "end": "2026-03-01", "group_by": ["team", "model", "key"]}
    )
    _header, row = read_csv(download)
    assert row[:3] == ["'" + cell, "'" + cell, "'" + cell[:16]]
    assert all(not value.startswith(("=", "+", "-", "@", "\t", "\r")) for value in row)


def test_csv_streams_a_big_range_in_chunks(staff_client, team, monkeypatch):
    import dashboard.exports as exports

    monkeypatch.setattr(exports, "USAGE_CSV_CHUNK", 7)
    start = at("2020-01-01")
    UsageRollup.objects.bulk_create(
        [
            UsageRollup(
                writer="w",
                minute=start + timedelta(days=i),
                team=team,
                team_name=team.name,
                endpoint="chat",
                model=LLAMA,
                status_class="2xx",
                requests=1,
                total_tokens=i,
                cost=Decimal(i),
            )
            for i in range(1000)
        ]
    )
    download = staff_client.get(CSV, {"start": "2020-01-01", "end": "2029-12-31"})
    chunks = async_to_sync(_chunks)(download)
    assert len(chunks) > 100  # written as it goes, not in one piece
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == 1001 and rows[1][0] == "2022-09-26" and rows[-1][0] == "2020-01-01"


async def _chunks(response) -> list[bytes]:
    return [chunk async for chunk in response.streaming_content]


# --- another team's data ------------------------------------------------------------------
def test_each_teams_usage_is_under_its_own_name_only(staff_client, team, other_team):
    rollup(team, at("2026-03-01"), key_prefix="sk-sluice-search", prompt=11, completion=0)
    rollup(other_team, at("2026-03-01"), key_prefix="sk-sluice-adsads", prompt=22, completion=0)
    params = {"start": "2026-03-01", "end": "2026-03-01"}
    grouped = staff_client.get(USAGE, {**params, "group_by": ["team", "key"]})
    assert sorted(table_rows(grouped.content.decode())) == [
        ["ads", "sk-sluice-adsads", "1", "0", "22", "0", "22", "0.000012"],
        ["search", "sk-sluice-search", "1", "0", "11", "0", "11", "0.000012"],
    ]
    only_search = staff_client.get(USAGE, {**params, "team": "search", "group_by": ["team", "key"]})
    body = only_search.content.decode()
    assert table_rows(body) == [
        ["search", "sk-sluice-search", "1", "0", "11", "0", "11", "0.000012"]
    ]
    report = body.split('id="usage"')[1]
    assert "sk-sluice-adsads" not in body and ">ads<" not in report
    assert [s["label"] for s in chart(only_search)["series"]] == ["search · sk-sluice-search"]
    _header, *lines = read_csv(
        staff_client.get(CSV, {**params, "team": "search", "group_by": ["team", "key"]})
    )
    assert [line[:2] for line in lines] == [["search", "sk-sluice-search"]]


# --- the ops API: the same per-day rows ------------------------------------------------------
def test_the_ops_api_gives_the_same_per_day_rows(staff_client, team, other_team):
    for day in ("2026-03-01", "2026-03-02"):
        rollup(team, at(day))
        rollup(other_team, at(day), cost=Decimal("2"))
    answer = staff_client.get(
        "/api/usage",
        {
            "start": "2026-03-01T00:00:00Z",
            "end": "2026-03-03T00:00:00Z",
            "group_by": ["day", "team"],
        },
    )
    assert answer.status_code == 200
    api_rows = [[r["day"], r["team"], str(r["total_tokens"])] for r in answer.json()]
    _header, *lines = read_csv(
        staff_client.get(
            CSV, {"start": "2026-03-01", "end": "2026-03-02", "group_by": ["day", "team"]}
        )
    )
    assert api_rows == [[line[0], line[1], line[6]] for line in lines]
    assert api_rows[0] == ["2026-03-02", "ads", "15"]
    schema = staff_client.get("/api/openapi.json").json()
    out = schema["components"]["schemas"]["UsageTotalOut"]["properties"]
    assert {"day", "team", "cost", "total_tokens"} <= set(out)


# --- the team page's budgets ----------------------------------------------------------------
def test_team_page_shows_its_budgets_and_what_is_left(staff_client, team, other_team, key):
    now = timezone.now()
    dollars = Budget.objects.create(team=team, unit="dollars", period="month", limit=Decimal("10"))
    tokens = Budget.objects.create(
        team=team, key=key, model=LLAMA, unit="tokens", period="day", limit=Decimal("100")
    )
    Budget.objects.create(team=other_team, unit="dollars", period="day", limit=Decimal("777"))
    rollup(team, now, key_prefix=key.prefix, prompt=60, completion=30, cost=Decimal("2.5"))
    rollup(other_team, now, prompt=5000, completion=0, cost=Decimal("99"))

    response = staff_client.get(reverse("dashboard:team", args=[team.pk]))

    assert response.status_code == 200
    body = response.content.decode()
    section = body.split('id="budgets"')[1].split("</table>")[0]
    rows = {int(chunk.split('"')[0]): chunk for chunk in section.split('data-budget="')[1:]}
    assert set(rows) == {dollars.pk, tokens.pk}  # not the other team's
    assert "$2.5000" in rows[dollars.pk] and "$7.5000" in rows[dollars.pk]
    assert "25%" in rows[dollars.pk] and "within budget" in rows[dollars.pk]
    assert ">90<" in rows[tokens.pk] and ">10<" in rows[tokens.pk]
    assert "90%" in rows[tokens.pk] and "over its alert threshold" in rows[tokens.pk]
    assert key.prefix in rows[tokens.pk]
    assert "777" not in section
    link = f"{USAGE}?team=search&amp;group_by=day&amp;group_by=model"
    assert link in body
    # No form changes a budget from here but the one-click switch to shadow and back.
    actions = set(re.findall(r'<form[^>]*action="([^"]+)"', section))
    assert actions == {reverse("dashboard:budget_shadow", args=[b.pk]) for b in (dollars, tokens)}


def test_team_page_without_budgets_says_so(staff_client, team):
    body = staff_client.get(reverse("dashboard:team", args=[team.pk])).content.decode()
    assert "No budget: this team" in body


def test_an_exhausted_budget_says_calls_are_refused(staff_client, team):
    Budget.objects.create(team=team, unit="tokens", period="week", limit=Decimal("10"))
    rollup(team, timezone.now(), prompt=10, completion=5)
    body = staff_client.get(reverse("dashboard:team", args=[team.pk])).content.decode()
    assert "exhausted: calls refused" in body and "150%" in body


def test_chart_data_is_json_in_the_page(staff_client, team):
    rollup(team, at("2026-03-01"))
    body = staff_client.get(USAGE, {"start": "2026-03-01", "end": "2026-03-02"}).content.decode()
    script = body.split('<script id="chart-data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(script)["series"][0]["label"] == "search"
