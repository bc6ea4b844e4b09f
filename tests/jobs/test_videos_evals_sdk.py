"""The together SDK 3.1's videos, evaluations, fine-tune extras and file contents, unchanged
but for the base URL, through a real Sluice server to the sandbox over HTTP: the answer
the SDK parses, the team's usage row, and a 429 from a tight profile row recorded with
its reason (issue 23)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import together

from tests.servers import SluiceServer
from tests.waiting import wait_until

VIDEO_MODEL = "minimax/video-01-director"
FT_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
TRAINING = b'{"text": "hello world"}\n{"text": "goodbye moon"}\n'
EVAL_INPUT = b'{"prompt": "2+2?", "answer": "4"}\n'
# One request a minute, no burst beyond one, no queueing: the second call is refused.
ONE_A_MINUTE = {
    "requests_per_minute": 1,
    "pace_per_minute": None,
    "burst": 1,
    "queue_depth": 0,
    "max_queue_wait_seconds": 0,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    with SluiceServer(tmp_path_factory.mktemp("jobs23")) as running:
        # The shared account's ceiling well above what these tests send (its caps stay the
        # default's): a test's 429 is its own tight row's, not the account's.
        fast = {"requests_per_minute": 6000, "burst": 100}
        running.make_profile(
            "jobs23-account",
            {kind: fast for kind in ("videos", "evaluations", "fine_tunes", "files")},
            account=True,
        )
        running.sandbox.configure(
            {"video_seconds": 1.0, "evaluation_seconds": 1.0, "fine_tune_seconds": 1.0}
        )
        yield running


def _client(server: SluiceServer, secret: str) -> together.Together:
    # The together SDK 3.x takes the root URL; its paths carry /v1 and /v2 themselves.
    return together.Together(base_url=server.url, api_key=secret, max_retries=0)


def _http(server: SluiceServer, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {secret}"}, timeout=30
    )


def _upload(server: SluiceServer, secret: str, content: bytes, purpose: str) -> str:
    with _http(server, secret) as http:
        answer = http.post(
            "/v1/files", data={"purpose": purpose}, files={"file": ("data.jsonl", content)}
        )
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def _usage_rows(server: SluiceServer, team: str, endpoint: str) -> list[dict]:
    out = server.python(
        "import json\n"
        "from limiter.usage.models import UsageRollup\n"
        f"rows = UsageRollup.objects.filter(team_name={team!r}, endpoint={endpoint!r})\n"
        "print(json.dumps([{'model': r.model, 'requests': r.requests, 'source': r.source,"
        " 'status': r.status_class, 'cost': str(r.cost.normalize())} for r in rows]))\n"
    )
    return json.loads(out)


def _wait_usage(server: SluiceServer, team: str, endpoint: str, what: str) -> list[dict]:
    return wait_until(
        lambda: _usage_rows(server, team, endpoint),
        lambda rows: bool(rows),
        within=20,
        what=what,
    )


def _refusal(server: SluiceServer, team: str, endpoint: str) -> list[str]:
    return server.python(
        "from limiter.models import Refusal\n"
        f"r = Refusal.objects.filter(team_name={team!r}, endpoint={endpoint!r}).first()\n"
        "print(r.reason, r.source, r.endpoint) if r else print('none')\n"
    ).split()


def _tight(server: SluiceServer, profile: str, endpoint: str, team: str) -> str:
    server.make_profile(profile, {endpoint: ONE_A_MINUTE})
    return server.issue_key(team, profile=profile)


def _assert_refused(server: SluiceServer, call, team: str, endpoint: str) -> None:
    """The first call passes, the second is Sluice's 429, recorded with its reason."""
    call()
    with pytest.raises(together.RateLimitError) as caught:
        call()
    assert caught.value.response.headers["x-sluice-limited-by"] == "gateway"
    assert json.loads(caught.value.response.text)["error"]["code"] == "rate_limited"
    assert 55 <= int(caught.value.response.headers["retry-after"]) <= 60
    recorded = wait_until(
        lambda: _refusal(server, team, endpoint),
        lambda row: row != ["none"],
        within=15,
        what="the 429 to be recorded",
    )
    assert recorded == ["rate_limited", "gateway", endpoint]


# --- videos ---------------------------------------------------------------------------------
def test_video_created_polled_and_its_cost_recorded(server: SluiceServer) -> None:
    secret = server.issue_key("jobs23-video")
    client = _client(server, secret)

    job = client.videos.create(model=VIDEO_MODEL, prompt="a lighthouse at dusk", seconds="5")

    assert job.id.startswith("video-sluice-")
    assert job.model == VIDEO_MODEL
    assert job.status in ("queued", "in_progress")
    done = wait_until(
        lambda: client.videos.retrieve(job.id),
        lambda video: video.status == "completed",
        within=20,
        what="the video to complete",
    )
    assert done.id == job.id and done.outputs is not None
    assert done.outputs.video_url.endswith(".mp4")
    with _http(server, secret) as http:
        listed = http.get("/v2/videos").json()
    assert [row["id"] for row in listed["data"]] == [job.id]
    # The cost Together stated for the clip, recorded once the poller saw it end.
    rows = _wait_usage(server, "jobs23-video", "videos", "the video's usage row")
    assert rows == [
        {"model": VIDEO_MODEL, "requests": 1, "source": "video", "status": "2xx", "cost": "0.28"}
    ]


def _team_on_profile(server: SluiceServer, team: str, profile: str) -> str:
    """A key of a new team on `profile` (job caps are the team's, not the key's)."""
    with httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    ) as ops:
        ops.post("/teams", json={"name": team, "profile": profile}).raise_for_status()
    return server.issue_key(team)


def test_videos_beyond_the_cap_wait_queued_instead_of_refused(server: SluiceServer) -> None:
    server.make_profile("jobs23-one-video", {"videos": {"max_concurrent": 1}})
    secret = _team_on_profile(server, "jobs23-video-cap", "jobs23-one-video")
    client = _client(server, secret)
    server.sandbox.configure({"video_seconds": 2.0})
    try:
        first = client.videos.create(model=VIDEO_MODEL, prompt="one")
        second = client.videos.create(model=VIDEO_MODEL, prompt="two")
    finally:
        server.sandbox.configure({"video_seconds": 1.0})

    assert first.status != "queued" or first.model_extra["sluice"]["state"] != "queued"
    assert second.status == "queued"
    assert second.model_extra["sluice"]["state"] == "queued"
    assert second.model_extra["sluice"]["upstream_id"] is None
    # The first ends, and the second starts in its slot, then ends too.
    wait_until(
        lambda: client.videos.retrieve(second.id),
        lambda video: video.status == "completed",
        within=30,
        what="the queued video to start and complete",
    )


def test_a_tight_videos_row_refuses_with_429_recorded(server: SluiceServer) -> None:
    client = _client(server, _tight(server, "jobs23-tight-videos", "videos", "jobs23-v429"))
    _assert_refused(
        server,
        lambda: client.videos.create(model=VIDEO_MODEL, prompt="p"),
        "jobs23-v429",
        "videos",
    )


# --- evaluations --------------------------------------------------------------------------
def _classify(file_id: str) -> dict:
    return {
        "input_data_file_path": file_id,
        "judge": {
            "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "model_source": "serverless",
            "system_template": "Is the answer right?",
        },
        "labels": ["right", "wrong"],
        "pass_labels": ["right"],
    }


def test_evaluation_created_listed_read_and_polled(server: SluiceServer) -> None:
    secret = server.issue_key("jobs23-eval")
    client = _client(server, secret)
    file_id = _upload(server, secret, EVAL_INPUT, "eval")

    created = client.evals.create(type="classify", parameters=_classify(file_id))

    assert created.status == "pending" and created.workflow_id
    assert [job.workflow_id for job in client.evals.list()] == [created.workflow_id]
    job = client.evals.retrieve(created.workflow_id)
    assert job.type == "classify"
    status = wait_until(
        lambda: client.evals.status(created.workflow_id),
        lambda answer: answer.status == "completed",
        within=20,
        what="the evaluation to complete",
    )
    assert status.results is not None
    # create, list, retrieve and the polls: a row each (rows are written every second).
    rows = wait_until(
        lambda: _usage_rows(server, "jobs23-eval", "evaluations"),
        lambda found: sum(row["requests"] for row in found) >= 4,
        within=15,
        what="the evaluations' usage rows",
    )
    assert {row["status"] for row in rows} == {"2xx"}


def test_a_tight_evaluations_row_refuses_with_429_recorded(server: SluiceServer) -> None:
    secret = _tight(server, "jobs23-tight-evals", "evaluations", "jobs23-e429")
    client = _client(server, secret)
    file_id = _upload(server, secret, EVAL_INPUT, "eval")
    _assert_refused(
        server,
        lambda: client.evals.create(type="classify", parameters=_classify(file_id)),
        "jobs23-e429",
        "evaluations",
    )


# --- fine-tune extras and file contents ------------------------------------------------------
def _fine_tune(server: SluiceServer, secret: str, training: str) -> str:
    with _http(server, secret) as http:
        answer = http.post("/v1/fine-tunes", json={"model": FT_MODEL, "training_file": training})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def test_fine_tune_extras_and_file_content(server: SluiceServer) -> None:
    secret = server.issue_key("jobs23-ft")
    client = _client(server, secret)
    training = _upload(server, secret, TRAINING, "fine-tune")
    job_id = _fine_tune(server, secret, training)

    preview = client.fine_tuning.preview(model=FT_MODEL, training_file=training)
    assert preview.model == FT_MODEL and len(preview.rows) == 2
    limits = client.fine_tuning.model_limits(model_name=FT_MODEL)
    assert limits.max_num_epochs > 0
    price = client.fine_tuning.estimate_price(training_file=training, model=FT_MODEL)
    assert price.estimation_available is True
    wait_until(
        lambda: client.fine_tuning.retrieve(job_id).status,
        lambda status: status == "completed",
        within=20,
        what="the fine-tune to complete",
    )
    checkpoints = client.fine_tuning.list_checkpoints(job_id)
    assert [point.step for point in checkpoints.data] == [1]
    dataset = client.fine_tuning.retrieve_tokenized_dataset(job_id)
    assert dataset.filename.endswith(".tar.gz") and dataset.size == len(TRAINING)
    assert client.files.content(training).read() == TRAINING

    # preview, limits, price, checkpoints, tokenized dataset: a request each.
    rows = wait_until(
        lambda: _usage_rows(server, "jobs23-ft", "fine_tunes"),
        lambda found: sum(row["requests"] for row in found) >= 5,
        within=15,
        what="a usage row for each fine-tune extra",
    )
    assert any(row["model"] == FT_MODEL for row in rows)  # the preview's and the price's
    assert _wait_usage(server, "jobs23-ft", "files", "the file content's usage row")


def test_a_tight_fine_tunes_row_refuses_a_preview_with_429_recorded(server: SluiceServer) -> None:
    secret = _tight(server, "jobs23-tight-ft", "fine_tunes", "jobs23-f429")
    client = _client(server, secret)
    training = _upload(server, secret, TRAINING, "fine-tune")
    _assert_refused(
        server,
        lambda: client.fine_tuning.preview(model=FT_MODEL, training_file=training),
        "jobs23-f429",
        "fine_tunes",
    )


def test_a_tight_files_row_refuses_file_content_with_429_recorded(server: SluiceServer) -> None:
    secret = server.issue_key("jobs23-c429")
    training = _upload(server, secret, TRAINING, "fine-tune")
    server.make_profile("jobs23-tight-files", {"files": ONE_A_MINUTE})
    tight = server.issue_key("jobs23-c429", profile="jobs23-tight-files")
    client = _client(server, tight)
    _assert_refused(server, lambda: client.files.content(training).read(), "jobs23-c429", "files")


def test_video_prices_have_a_source(server: SluiceServer) -> None:
    """The price entry a video without a stated cost is charged at."""
    from limiter.usage.job_reports import VIDEO_LIST_PRICES, video_usage

    report = video_usage({"model": VIDEO_MODEL, "status": "completed"}, "", (None, None, None))
    assert report.cost == VIDEO_LIST_PRICES[VIDEO_MODEL] == Decimal("0.28")


def test_videos_are_held_against_a_dollar_budget(server: SluiceServer) -> None:
    """A video holds its price (0.28 for this model) against the team's budget from its
    create: within the budget it is accepted, past what is left it is refused with
    `budget_exceeded`, and nothing reaches Together."""
    secret = server.issue_key("jobs23-video-budget")
    with httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    ) as ops:
        team_id = next(
            t["id"] for t in ops.get("/teams").json() if t["name"] == "jobs23-video-budget"
        )
        made = ops.post(
            f"/teams/{team_id}/budgets", json={"unit": "dollars", "period": "day", "limit": "0.5"}
        )
        assert made.status_code == 201, made.text
    client = _client(server, secret)
    first = client.videos.create(model=VIDEO_MODEL, prompt="within the budget")
    assert first.id.startswith("video-sluice-")
    with pytest.raises(together.RateLimitError) as caught:
        client.videos.create(model=VIDEO_MODEL, prompt="past what is left")
    error = json.loads(caught.value.response.text)["error"]
    assert error["code"] == "budget_exceeded"
    assert "video" in error["message"]
    with _http(server, secret) as http:
        assert [row["id"] for row in http.get("/v2/videos").json()["data"]] == [first.id]
    recorded = wait_until(
        lambda: _refusal(server, "jobs23-video-budget", "videos"),
        lambda row: row != ["none"],
        within=15,
        what="the refusal to be recorded",
    )
    assert recorded == ["budget_exceeded", "gateway", "videos"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": "no model"}, "missing_field"),
        ({"model": 7}, "invalid_type"),
        ({"model": "m" * 201}, "invalid_value"),
        ({"model": "m\u0000"}, None),
    ],
)
def test_a_bad_video_body_is_a_400_before_anything_is_stored(
    server: SluiceServer, body: dict, code: str | None
) -> None:
    secret = server.issue_key("jobs23-video-bad")
    with _http(server, secret) as http:
        answer = http.post("/v2/videos", json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error"
        if code is not None:
            assert error["code"] == code and error["param"] == "model"
        assert http.get("/v2/videos").json()["data"] == []


def _upstream_evaluations(server: SluiceServer) -> int:
    """How many evaluations Together (the sandbox, asked directly) holds."""
    answer = httpx.get(
        f"{server.sandbox.v1_url}/evaluation", headers={"authorization": "Bearer x"}, timeout=10
    )
    return len(answer.json())


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"parameters": {}}, "missing_field", "type"),
        ({"type": "classify", "parameters": "x"}, "invalid_type", "parameters"),
        ({"type": "classify", "parameters": {"input_data_file_path": "../x"}}, "not_found", None),
    ],
)
def test_a_bad_evaluation_body_is_refused_before_together_hears_of_it(
    server: SluiceServer, body: dict, code: str, param: str | None
) -> None:
    secret = server.issue_key("jobs23-eval-bad")
    before = _upstream_evaluations(server)
    with _http(server, secret) as http:
        answer = http.post("/v1/evaluation", json=body)
        assert answer.status_code in (400, 404), answer.text
        error = answer.json()["error"]
        assert error["code"] == code
        if param is not None:
            assert error["param"] == param
        assert http.get("/v1/evaluation").json() == []
    assert _upstream_evaluations(server) == before
