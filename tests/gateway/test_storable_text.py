"""Text a caller sends is storable on PostgreSQL, and one unstorable row never stops a
recorder (issue 18, item 2).

`"model": "evil\\u0000model"` was answered, and from then on every usage flush failed
("PostgreSQL text fields cannot contain NUL") for every team: later calls and 429s were
never recorded. A NUL in a fine-tune body answered 500. Now such a body is a 400 at the
edge (NUL and unpaired surrogates anywhere in it), and a recorder whose batch the
database refuses writes each row alone, dropping only the bad one. One Sluice on a
PostgreSQL database of its own (dropped at the end).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from limiter.gateway import errors
from tests.gateway.test_errors import MESSAGES, MODEL, assert_error
from tests.scaleout.conftest import _postgres_database
from tests.servers import SluiceServer
from tests.waiting import wait_until

CHAT = "/v1/chat/completions"
OTHER_MODEL = "Qwen/Qwen2.5-7B-Instruct-Turbo"
# Escapes as they travel in JSON: NUL, a lone high and a lone low surrogate.
UNSTORABLE = ["\\u0000", "\\ud800", "\\udfff"]
# Team "later"'s chat: one request a minute and no queue, so its second call is a 429.
ONE_A_MINUTE = {"chat": {"requests_per_minute": 1, "pace_per_minute": None, "burst": 1}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    with (
        _postgres_database() as url,
        SluiceServer(tmp_path_factory.mktemp("pg"), env={"DATABASE_URL": url}) as sluice,
    ):
        sluice.make_profile("one-a-minute", ONE_A_MINUTE)
        yield sluice


def post(server: SluiceServer, key: str, path: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
    )


def rows(server: SluiceServer, team: str) -> tuple[int, int]:
    """(usage requests, 429 records) of `team` in the database."""
    out = server.python(
        "from django.db.models import Sum\n"
        "from limiter.models import Refusal\n"
        "from limiter.usage.models import UsageRollup\n"
        f"used = UsageRollup.objects.filter(team_name={team!r}).aggregate(n=Sum('requests'))\n"
        f"print(used['n'] or 0, Refusal.objects.filter(team_name={team!r}).count())\n"
    )
    used, refused = out.split()
    return int(used), int(refused)


@pytest.mark.parametrize("escape", UNSTORABLE)
def test_unstorable_model_is_a_400_and_others_are_still_recorded(
    server: SluiceServer, escape: str
) -> None:
    evil = server.issue_key(f"evil-{escape[2:]}")
    body = f'{{"model": "evil{escape}model", "messages": {json.dumps(MESSAGES)}}}'
    error = assert_error(post(server, evil, CHAT, body.encode()), 400, "invalid_value")
    assert (error["param"], error["message"]) == ("model", errors.MSG_TEXT_NOT_STORABLE)

    # Another team, after it: its calls and its 429 are recorded.
    team = f"later-{escape[2:]}"
    later = server.issue_key(team, profile="one-a-minute")
    answer = post(
        server, later, CHAT, json.dumps({"model": OTHER_MODEL, "messages": MESSAGES}).encode()
    )
    assert answer.status_code == 200, answer.text
    refused = post(server, later, CHAT, json.dumps({"model": MODEL, "messages": MESSAGES}).encode())
    assert refused.status_code == 429, refused.text
    wait_until(lambda: rows(server, team), lambda found: found == (1, 1), within=15, every=0.2)
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("escape", UNSTORABLE)
@pytest.mark.parametrize("field", ["suffix", "wandb_project_name", "nested"])
def test_unstorable_text_in_a_fine_tune_body_is_a_400(
    server: SluiceServer, escape: str, field: str
) -> None:
    key = server.issue_key("tuner")
    uploaded = httpx.post(
        f"{server.url}/v1/files",
        headers={"authorization": f"Bearer {key}"},
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", b'{"text": "x"}\n')},
        timeout=30,
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    value = f'"a{escape}b"'
    if field == "nested":
        field, value = "metadata", f'{{"note": ["fine", {value}]}}'
    body = f'{{"model": "{MODEL}", "training_file": "{file_id}", "{field}": {value}}}'
    error = assert_error(post(server, key, "/v1/fine-tunes", body.encode()), 400, "invalid_value")
    assert (error["param"], error["message"]) == (field, errors.MSG_TEXT_NOT_STORABLE)


# Injected straight into the recorders beside good rows: the database refuses each bad
# one (NUL, a lone surrogate, a team name longer than its column), the good ones land.
RECORDERS = """
import asyncio
from limiter.models import Refusal
from limiter.gateway.refusals import Recorder
from limiter.usage.models import UsageRollup
from limiter.usage.recorder import UsageRecorder

tag = {tag!r}
bad = [("m", "evil\\x00" + tag), ("m", "x\\ud800" + tag), ("t" * 300, tag)]
good = [("m", f"good-{{i}}-" + tag) for i in range(3)]
refusals, usage = Recorder(), UsageRecorder()
for team_name, model in [good[0], *bad, *good[1:]]:
    refusals.refusal(
        team_id=None, team_name=team_name, key_prefix="sk-sluice-x", upstream="together",
        endpoint="chat", model=model, reason="rate_limited", source="gateway",
        retry_after=1.0, request_id=tag,
    )
    usage.record(
        team_id=None, team_name=team_name, key_prefix="sk-sluice-x", upstream="together",
        endpoint="chat", model=model, status=200, prompt=1, completion=2, total=3,
    )
written = asyncio.run(refusals.flush()), asyncio.run(usage.flush(final=True))
again = asyncio.run(refusals.flush()), asyncio.run(usage.flush(final=True))
stored = (
    sorted(Refusal.objects.filter(request_id=tag).values_list("model", flat=True)),
    sorted(UsageRollup.objects.filter(model__endswith=tag).values_list("model", flat=True)),
)
print(repr((written, again, stored)))
"""


def test_a_recorder_drops_only_the_row_the_database_cannot_store(server: SluiceServer) -> None:
    tag = uuid.uuid4().hex[:8]
    written, again, stored = eval(server.python(RECORDERS.format(tag=tag)))  # noqa: S307
    good = sorted(f"good-{i}-{tag}" for i in range(3))
    assert written == (3, 3)
    assert again == (0, 0)  # the bad rows were dropped, not kept to fail the next flush
    assert stored == (good, good)


def test_a_job_whose_usage_no_column_holds_does_not_stop_the_others(server: SluiceServer) -> None:
    """A fine-tune with n_epochs=1e308 (a finite number: it passes) is reported by the
    sandbox with more tokens than a bigint holds: its usage failed every pass of the job
    poller, and with it every later job's, for every team. Now it is noted as unstorable
    and the next job's usage is recorded."""
    ids = {}
    for team, epochs in (("huge-job", 1e308), ("after-job", 1)):
        key = server.issue_key(team)
        uploaded = httpx.post(
            f"{server.url}/v1/files",
            headers={"authorization": f"Bearer {key}"},
            data={"purpose": "fine-tune"},
            files={"file": ("t.jsonl", b'{"text": "x y z"}\n')},
            timeout=30,
        )
        body = {"model": MODEL, "training_file": uploaded.json()["id"], "n_epochs": epochs}
        job = post(server, key, "/v1/fine-tunes", json.dumps(body).encode())
        assert job.status_code == 200, job.text
        ids[team] = job.json()["id"]
    code = (
        "from limiter.usage.models import JobUsage, UsageRollup\n"
        f"ids = {ids!r}\n"
        "notes = {t: list(JobUsage.objects.filter(job__public_id=i).values_list('note', flat=True))"
        " for t, i in ids.items()}\n"
        "rows = UsageRollup.objects.filter(team_name='after-job', source='fine_tune').count()\n"
        "print(repr((notes, rows)))\n"
    )
    notes, rows_after = wait_until(
        lambda: eval(server.python(code)),  # noqa: S307
        lambda read: read[0]["after-job"] and read[0]["huge-job"],
        within=30,
        every=0.2,
    )
    assert notes["huge-job"] == ["Usage as reported is out of range: not recorded."]
    assert notes["after-job"] != [] and rows_after >= 1
