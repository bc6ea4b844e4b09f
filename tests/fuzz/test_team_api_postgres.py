"""Extreme values in every field of the /v1 bodies, against a Sluice on PostgreSQL
(issue 18: "one team cannot break Sluice for the others").

For chat, completions, embeddings, images, rerank, fine-tunes and batches, every leaf of
a well-formed body (strings, numbers, list items, nested objects) is replaced in turn by
each extreme value: integers past 64 bits (10**400, -10**400, 2**63), floats (1e308,
-0.0, and NaN / Infinity / -Infinity as the JSON tokens Python writes), NUL and unpaired
surrogates; a key holding NUL is added too; then a hypothesis run mixes several at once.
The limits carry a tokens-per-minute row, so estimates reach the limiter.

Asserted: no answer is a 5xx (but the sandbox's own crash on a value, relayed as
Together's 502: see `stand_in_failed`); after each endpoint's sweep another team's call is
answered 200; and every one of that team's calls is in the usage record (PostgreSQL
once refused a whole flush for one NUL model name, from then on, for every team).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.server import ENDPOINTS, GENEROUS, fuzz_sluice
from tests.scaleout.conftest import _postgres_database
from tests.servers import SluiceServer
from tests.waiting import wait_until

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
BYSTANDER = "bystander"
EXTREMES: list[Any] = [
    10**400,
    -(10**400),
    2**63,
    1e308,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    "a\x00b",
    "\ud800",
    "x\udfffy",
]
TPM = {**GENEROUS, "tokens_per_minute": 100_000_000}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    with (
        _postgres_database() as url,
        fuzz_sluice(tmp_path_factory.mktemp("fuzz-pg"), {"DATABASE_URL": url}) as sluice,
    ):
        sluice.make_profile("fuzz-tpm", {endpoint: TPM for endpoint in ENDPOINTS}, account=True)
        yield sluice


@pytest.fixture(scope="module")
def fuzzer(server: SluiceServer) -> Iterator[httpx.Client]:
    key = server.issue_key("fuzzer", profile="fuzz-tpm")
    with httpx.Client(
        base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
def bystander(server: SluiceServer) -> Iterator[httpx.Client]:
    key = server.issue_key(BYSTANDER, profile="fuzz-tpm")
    with httpx.Client(
        base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
def bodies(fuzzer: httpx.Client) -> dict[str, dict[str, Any]]:
    """A well-formed body per route, naming the fuzzing team's own files."""

    def upload(content: bytes, purpose: str) -> str:
        answer = fuzzer.post(
            "/files", data={"purpose": purpose}, files={"file": ("f.jsonl", content)}
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])

    line = {
        "custom_id": "1",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    }
    training = upload(b'{"text": "x"}\n', "fine-tune")
    batch_input = upload(json.dumps(line).encode() + b"\n", "batch-api")
    return {
        "/chat/completions": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16,
            "temperature": 0.5,
            "user": "u",
            "stop": ["z"],
        },
        "/completions": {
            "model": "meta-llama/Llama-2-70b-hf",
            "prompt": "hi",
            "max_tokens": 8,
            "n": 1,
        },
        "/embeddings": {"model": "BAAI/bge-base-en-v1.5", "input": ["a", "b"]},
        "/images/generations": {
            "model": "black-forest-labs/FLUX.1-schnell",
            "prompt": "cat",
            "n": 1,
            "width": 64,
        },
        "/rerank": {
            "model": "Salesforce/Llama-Rank-V1",
            "query": "q",
            "documents": ["a", "b"],
            "top_n": 1,
        },
        "/fine-tunes": {
            "model": MODEL,
            "training_file": training,
            "n_epochs": 1,
            "suffix": "s",
            "learning_rate": 1e-5,
        },
        "/batches": {
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch_input,
            "completion_window": "24h",
            "metadata": {"k": "v"},
        },
    }


def leaves(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path of every leaf of a JSON value (dict keys and list indexes)."""
    if isinstance(value, dict):
        for name, child in value.items():
            yield from leaves(child, (*path, name))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, (*path, index))
    else:
        yield path


def replaced(body: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(body) if isinstance(body, dict) else list(body)
    copy[path[0]] = replaced(body[path[0]], path[1:], new)
    return copy


def send(client: httpx.Client, route: str, body: Any) -> httpx.Response:
    # Python's json writes 10**400 in digits, NaN / Infinity as tokens and "\u0000" /
    # "\ud800" as escapes: the bytes a hostile caller sends.
    response = client.post(
        route, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    if not stand_in_failed(response):
        assert response.status_code < 500, (route, json.dumps(body)[:300], response.text[:300])
    return response


def stand_in_failed(response: httpx.Response) -> bool:
    """The sandbox standing in for Together failed on the value (a number as a prompt is
    a TypeError there) and Sluice relayed it as Together's 5xx: not Sluice's failure.
    Together itself answers such a body 400."""
    return response.status_code == 502 and response.json()["error"]["message"].startswith(
        "Sandbox internal error"
    )


class Bystander:
    calls = 0


def bystander_call(bystander: httpx.Client) -> None:
    answer = bystander.post(
        "/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "still here?"}],
            "max_tokens": 8,
        },
    )
    assert answer.status_code == 200, answer.text
    Bystander.calls += 1


ROUTES = [
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/images/generations",
    "/rerank",
    "/fine-tunes",
    "/batches",
]


@pytest.mark.parametrize("route", ROUTES)
def test_every_field_with_every_extreme_value(
    fuzzer: httpx.Client, bystander: httpx.Client, bodies: dict, route: str
) -> None:
    base = bodies[route]
    statuses = set()
    for path in leaves(base):
        for value in EXTREMES:
            statuses.add(send(fuzzer, route, replaced(base, path, value)).status_code)
    for key in ("k\x00", "\ud800"):
        statuses.add(send(fuzzer, route, {**base, key: 1}).status_code)
    assert 400 in statuses
    bystander_call(bystander)


extreme_values = st.sampled_from(EXTREMES)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data(), route=st.sampled_from(ROUTES))
def test_several_extremes_at_once(
    fuzzer: httpx.Client, bystander: httpx.Client, bodies: dict, data: st.DataObject, route: str
) -> None:
    body = bodies[route]
    paths = list(leaves(body))
    for path in data.draw(st.lists(st.sampled_from(paths), min_size=2, max_size=4, unique=True)):
        body = replaced(body, path, data.draw(extreme_values))
    send(fuzzer, route, body)


def test_the_bystanders_calls_are_all_answered_and_recorded(
    server: SluiceServer, bystander: httpx.Client
) -> None:
    for _ in range(3):
        bystander_call(bystander)
    expected = Bystander.calls
    code = (
        "from django.db.models import Sum\n"
        "from limiter.usage.models import UsageRollup\n"
        f"rows = UsageRollup.objects.filter(team_name={BYSTANDER!r})\n"
        "print(rows.aggregate(n=Sum('requests'))['n'] or 0)\n"
    )
    wait_until(lambda: int(server.python(code)), lambda n: n == expected, within=15, every=0.2)
    assert all(process.poll() is None for process in server.processes)
    blocks = server.log().split("Traceback (most recent call last):")[1:]
    assert not blocks, blocks[0][:4000]
