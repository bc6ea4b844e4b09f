"""Job tests run against a real sandbox upstream (in a thread) in accelerated time.

Service and handler tests call `limiter.jobs` directly with a KeyInfo for a team whose
upstream account points at the sandbox; through-Sluice tests use `sluice_server`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from limiter.gateway import keys
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Request, Response
from limiter.gateway.keys import KeyInfo
from limiter.jobs.models import Job, JobState
from limiter.jobs.poller import Poller
from limiter.models import EndpointLimit, UpstreamAccount
from limiter.services import key_issue, team_get_or_create
from limiter.upstream import client
from sandbox import ThreadedSandbox, run_in_thread
from tests.waiting import await_until

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


@pytest.fixture(scope="session")
def _jobs_sandbox() -> Iterator[ThreadedSandbox]:
    with run_in_thread() as server:
        yield server


@pytest.fixture
def sandbox(_jobs_sandbox: ThreadedSandbox) -> ThreadedSandbox:
    _jobs_sandbox.reset()
    _jobs_sandbox.configure(
        {"fine_tune_seconds": 1.0, "batch_seconds": 1.0, "max_running_fine_tunes": 3}
    )
    return _jobs_sandbox


@pytest.fixture
def account(sandbox: ThreadedSandbox, seeded_transactional_db: None, settings) -> UpstreamAccount:
    # The sandbox's host must be allowed: the key goes nowhere else (limiter/upstream.py).
    settings.SLUICE_UPSTREAM_ALLOWED_HOSTS = ["127.0.0.1"]
    account = UpstreamAccount.objects.get(is_default=True)
    account.base_url = sandbox.v1_url
    account.save()
    return account


@pytest.fixture(autouse=True)
async def _close_upstream_client() -> Any:
    # The shared client is bound to the test's event loop; close it with the loop.
    yield
    await client.aclose()


@pytest.fixture
def make_key(account: UpstreamAccount) -> Callable[[str], KeyInfo]:
    """A usable key of a (new) team, as the router hands it to a handler."""

    def make(team: str) -> KeyInfo:
        team_row, _ = team_get_or_create(name=team)
        issued = key_issue(team=team_row)
        keys.cache.clear()
        info = keys._load(issued.key.secret_hash)
        assert info is not None
        return info

    return make


def set_cap(profile: str, endpoint: str, **fields: Any) -> None:
    EndpointLimit.objects.filter(profile__name=profile, endpoint=endpoint).update(**fields)


def request(
    key: KeyInfo,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    path_params: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Request:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    all_headers = {"content-type": "application/json"} if body is not None else {}
    all_headers.update(headers or {})
    return Request(
        method=method,
        path=path,
        query_string=b"",
        headers=all_headers,
        body=data,
        client="127.0.0.1",
        request_id="req_test",
        key=key,
        path_params=path_params or {},
    )


async def call(handler: Any, req: Request) -> tuple[int, Any]:
    """A handler's answer as (status, JSON); ApiError as the router would answer it."""
    try:
        response = await handler(req)
    except ApiError as exc:
        return exc.status, json.loads(exc.body())
    assert isinstance(response, Response)
    return response.status, json.loads(response.body) if response.body else None


def upload(sandbox: ThreadedSandbox, content: bytes, purpose: str, name: str = "data.jsonl") -> str:
    answer = httpx.post(
        f"{sandbox.v1_url}/files",
        headers={"authorization": "Bearer x"},
        data={"purpose": purpose},
        files={"file": (name, content)},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["id"]


def batch_lines(count: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            }
        ).encode()
        + b"\n"
        for i in range(count)
    )


async def drive(
    poller: Poller, until: Callable[[], bool], *, within: float = 30.0, every: float = 0.1
) -> None:
    """Run poller passes until `until()` (a sync DB check) holds."""
    check = sync_to_async(until)

    async def done_or_pass() -> bool:
        if await check():
            return True
        await poller.tick()
        return False

    await await_until(done_or_pass, within=within, every=every, what="the jobs done")


def all_done() -> bool:
    return not Job.objects.exclude(state__in=[JobState.DONE, JobState.GROUP]).exists()
