"""A team's fine-tuned models and checkpoints are its own (issue 8, item 2).

Every team's fine-tunes run in one Together account, which would serve any of them to
any key. Another team's model or checkpoint is answered exactly as an unknown model,
and never reaches Together; a model the owner's profile shares is everyone's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from limiter.gateway import errors
from tests.upstream_log import upstream_calls

BASE_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
# errors.MSG_MODEL_NOT_FOUND up to its hint.
UNKNOWN_START = errors.MSG_MODEL_NOT_FOUND.split("{hint}")[0]


@pytest.fixture(scope="module")
def server(shared_server: Any) -> Any:
    shared_server.sandbox.configure({"fine_tune_seconds": 60.0, "max_running_fine_tunes": 50})
    # Jobs run long and never wait for a slot (their answer names the model at once), and
    # a profile shares its teams' sandbox models, for the sharing test.
    shared_server.python(
        "from limiter.models import LimitProfile, EndpointLimit\n"
        "EndpointLimit.objects.filter(endpoint='fine_tunes').update(max_concurrent=None)\n"
        "profile = LimitProfile.objects.create("
        "name='shares-sandbox', shared_models=['SANDBOX/*-shared-*'])\n"
        "for row in EndpointLimit.objects.filter(profile__name='default'):\n"
        "    row.pk, row.profile = None, profile\n"
        "    row.save()\n"
    )
    # A model in Together's list before Sluice first reads the list (it keeps it minutes).
    key = shared_server.issue_key("lister")
    with httpx.Client(base_url=f"{shared_server.url}/v1", timeout=30) as http:
        shared_server.listed = (key, fine_tune(shared_server, http, key)["model_output_name"])
    return shared_server


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/v1", timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def fine_tune(server: Any, http: httpx.Client, key: str, **extra: Any) -> dict[str, Any]:
    """Start a fine-tune for the key's team; its answer names the output model at once."""
    upload = http.post(
        "/files",
        headers=auth(key),
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", b'{"text": "x"}\n')},
    )
    job = http.post(
        "/fine-tunes",
        headers=auth(key),
        json={"model": BASE_MODEL, "training_file": upload.json()["id"], **extra},
    )
    assert job.status_code == 200, job.text
    assert job.json()["model_output_name"], job.json()
    # The sandbox serves only models it knows: teach it this one, as Together knows it.
    known = server.sandbox.app.state.config.extra_models
    server.sandbox.configure({"extra_models": [*known, job.json()["model_output_name"]]})
    return job.json()


def assert_unknown_model(answer: httpx.Response, model: str, param: str = "model") -> None:
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert {name: error[name] for name in ("type", "param", "code")} == {
        "type": "not_found_error",
        "param": param,
        "code": "model_not_found",
    }
    assert error["message"].startswith(UNKNOWN_START.format(model=model)), error["message"]


def posts(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The calls that would have run something upstream (the embedded poller reads too)."""
    return [call for call in calls if call[0] != "GET"]


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def teams(server: Any, request: pytest.FixtureRequest) -> dict[str, str]:
    name = request.node.name.removeprefix("test_")[:40]
    return {"a": server.issue_key(f"{name}-a"), "b": server.issue_key(f"{name}-b")}


def test_chat_with_another_teams_fine_tuned_model_is_404(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    # Used the moment the create answer names it: ownership is recorded by then.
    model = fine_tune(server, http, teams["b"])["model_output_name"]
    requests = server.sandbox.stats()["chat"]["requests"]
    with upstream_calls(server.sandbox) as calls:
        for name in (model, model.upper(), f" {model} "):
            assert_unknown_model(
                http.post("/chat/completions", headers=auth(teams["a"]), json=chat(name)), name
            )
    assert posts(calls) == []  # reads only: the poller's, and the model list for the hint
    assert server.sandbox.stats()["chat"]["requests"] == requests
    # Word for word what a model nobody has gets (whatever Together itself says).
    unknown = http.post(
        "/chat/completions", headers=auth(teams["a"]), json=chat(model + "-nobodys")
    )
    assert_unknown_model(unknown, model + "-nobodys")
    # The owner uses it as any model.
    own = http.post("/chat/completions", headers=auth(teams["b"]), json=chat(model))
    assert own.status_code == 200, own.text
    assert server.sandbox.stats()["chat"]["requests"] == requests + 2


@pytest.mark.parametrize("path", ["/completions", "/embeddings", "/images/generations", "/rerank"])
def test_other_inference_routes_with_another_teams_model_are_404(
    server: Any, http: httpx.Client, teams: dict, path: str
) -> None:
    model = fine_tune(server, http, teams["b"])["model_output_name"]
    with upstream_calls(server.sandbox) as calls:
        answer = http.post(
            path,
            headers=auth(teams["a"]),
            json={"model": model, "prompt": "hi", "input": "hi", "query": "q", "documents": ["d"]},
        )
    assert_unknown_model(answer, model)
    assert posts(calls) == []


def test_another_teams_model_is_not_listed(server: Any, http: httpx.Client, teams: dict) -> None:
    owner, model = server.listed
    assert model in {row["id"] for row in http.get("/models", headers=auth(owner)).json()["data"]}
    listed = {row["id"] for row in http.get("/models", headers=auth(teams["a"])).json()["data"]}
    assert model not in listed and "meta-llama/Llama-3.3-70B-Instruct-Turbo" in listed


def test_fine_tune_from_another_teams_checkpoint_or_model_is_404(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    theirs = fine_tune(server, http, teams["b"])
    upstream_id = theirs["sluice"]["upstream_id"]
    upload = http.post(
        "/files",
        headers=auth(teams["a"]),
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", b'{"text": "a"}\n')},
    ).json()["id"]
    created = server.sandbox.stats()["fine_tunes"]["created"]
    with upstream_calls(server.sandbox) as calls:
        for checkpoint in (
            upstream_id,
            f"{upstream_id}:3",
            theirs["id"],
            theirs["model_output_name"],
        ):
            answer = http.post(
                "/fine-tunes",
                headers=auth(teams["a"]),
                json={"model": BASE_MODEL, "training_file": upload, "from_checkpoint": checkpoint},
            )
            assert_unknown_model(answer, checkpoint, param="from_checkpoint")
        answer = http.post(
            "/fine-tunes",
            headers=auth(teams["a"]),
            json={"model": theirs["model_output_name"], "training_file": upload},
        )
        assert_unknown_model(answer, theirs["model_output_name"])
        price = http.post(
            "/fine-tunes/estimate-price",
            headers=auth(teams["a"]),
            json={"model": BASE_MODEL, "training_file": upload, "from_checkpoint": upstream_id},
        )
        assert_unknown_model(price, upstream_id, param="from_checkpoint")
    assert posts(calls) == []
    assert server.sandbox.stats()["fine_tunes"]["created"] == created
    assert http.get("/fine-tunes", headers=auth(teams["a"])).json() == {"data": []}
    # The owner continues from its own checkpoint.
    own = http.post(
        "/fine-tunes",
        headers=auth(teams["b"]),
        json={
            "model": BASE_MODEL,
            "training_file": theirs["training_file"],
            "from_checkpoint": f"{upstream_id}:1",
        },
    )
    assert own.status_code == 200, own.text


def test_batch_running_another_teams_model_is_404(
    server: Any, http: httpx.Client, teams: dict
) -> None:
    model = fine_tune(server, http, teams["b"])["model_output_name"]
    line = b'{"custom_id": "r1", "body": {"model": "%s", "messages": []}}\n' % model.encode()
    upload = http.post(
        "/files",
        headers=auth(teams["a"]),
        data={"purpose": "batch-api"},
        files={"file": ("b.jsonl", line)},
    ).json()["id"]
    created = server.sandbox.stats()["batches"]["created"]
    answer = http.post(
        "/batches",
        headers=auth(teams["a"]),
        json={"endpoint": "/v1/chat/completions", "input_file_id": upload},
    )
    assert_unknown_model(answer, model)
    assert server.sandbox.stats()["batches"]["created"] == created
    assert http.get("/batches", headers=auth(teams["a"])).json() == []


def test_model_shared_by_its_owners_profile_is_usable_by_every_team(
    server: Any, http: httpx.Client
) -> None:
    admin = httpx.Client(base_url=f"{server.url}/api", headers=auth(server.admin_token), timeout=30)
    with admin:
        admin.post(
            "/teams", json={"name": "sharer", "profile": "shares-sandbox"}
        ).raise_for_status()
    sharer, other = server.issue_key("sharer"), server.issue_key("shared-with")
    shared = fine_tune(server, http, sharer, suffix="shared")["model_output_name"]
    private = fine_tune(server, http, sharer, suffix="private")["model_output_name"]
    answer = http.post("/chat/completions", headers=auth(other), json=chat(shared))
    assert answer.status_code == 200, answer.text
    assert_unknown_model(
        http.post("/chat/completions", headers=auth(other), json=chat(private)), private
    )
