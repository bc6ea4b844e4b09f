"""CSV exports never hand a spreadsheet a live formula: what a caller sent (a model name,
say) is written so that Excel or LibreOffice shows it as text (OWASP's CSV injection)."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from dashboard.exports import spreadsheet_safe
from tests.gateway.test_errors import MESSAGES
from tests.servers import SluiceServer
from tests.waiting import wait_until

FORMULA_MODEL = "=cmd|' /C calc'!A0"


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("meta-llama/Llama-3.3-70B", "meta-llama/Llama-3.3-70B"),
        ("a=b", "a=b"),
        ("", ""),
        ("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
    ],
)
def test_spreadsheet_safe(cell: str, written: str) -> None:
    assert spreadsheet_safe([cell]) == [written]


def test_the_429_csv_neutralises_a_formula_model_name(shared_server: SluiceServer) -> None:
    shared_server.make_profile(
        "csv-one",
        {
            "chat": {
                "requests_per_minute": 1,
                "pace_per_minute": None,
                "burst": 1,
                "queue_depth": 0,
                "max_queue_wait_seconds": 0,
            }
        },
    )
    key = shared_server.issue_key("csv-injection", profile="csv-one")
    body = {"model": FORMULA_MODEL, "messages": MESSAGES}
    headers = {"authorization": f"Bearer {key}"}
    httpx.post(f"{shared_server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    refused = httpx.post(
        f"{shared_server.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    )
    assert refused.status_code == 429

    api = httpx.Client(
        base_url=f"{shared_server.url}/api",
        timeout=30,
        headers={"authorization": f"Bearer {shared_server.admin_token}"},
    )

    def exported() -> list[dict[str, str]]:
        response = api.get("/refusals.csv", params={"team": "csv-injection"})
        assert response.status_code == 200
        return list(csv.DictReader(io.StringIO(response.text)))

    # The recorder writes once a second.
    rows = wait_until(exported, every=0.1, what="the refusal recorded")
    api.close()
    assert rows[0]["model"] == "'" + FORMULA_MODEL
    assert rows[0]["team_name"] == "csv-injection"
