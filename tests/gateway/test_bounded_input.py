"""Numbers a caller sends are bounded where they enter (issue 18, item 1).

`max_tokens` = 10**400 on a key with a tokens-per-minute limit reached the limiter as the
call's token estimate: the engine raised OverflowError while draining the queue it sat
in, every later acquire (which polls first) failed, and another team on another model
got 503 `limiter_unavailable`. Now it is a 400 naming the field, before admission, and
the other team's calls all go through.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from limiter.gateway import errors
from limiter.usage import sizing
from tests.gateway.test_errors import MESSAGES, MODEL, assert_error
from tests.servers import SluiceServer
from tests.waiting import wait_until

CHAT = "/v1/chat/completions"
OTHER_MODEL = "Qwen/Qwen2.5-7B-Instruct-Turbo"
# One request a second with a queue, and a token limit: a second call queues behind the
# first, and the call's token estimate goes to the engine.
TPM = {
    "chat": {
        "requests_per_minute": 60,
        "pace_per_minute": None,
        "burst": 1,
        "queue_depth": 5,
        "max_queue_wait_seconds": 10,
        "tokens_per_minute": 1_000_000,
    }
}
MESSAGE = errors.MSG_INTEGER_OUT_OF_RANGE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    with SluiceServer(
        tmp_path_factory.mktemp("bounded"), env={"SLUICE_LIMITER_TIMEOUT": "2"}
    ) as sluice:
        sluice.make_profile("tpm", TPM)
        yield sluice


def chat(server: SluiceServer, key: str, body: bytes | dict, results: list | None = None):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{server.url}{CHAT}",
        content=content,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
    )
    if results is not None:
        results.append(response)
    return response


def queued_in_limiter(server: SluiceServer) -> int:
    return httpx.get(f"{server.url}/readyz", timeout=10).json()["checks"]["limiter"]["queued"]


def test_max_tokens_10_to_the_400_is_a_400_and_nobody_elses_call_fails(
    server: SluiceServer,
) -> None:
    hostile, other = server.issue_key("hostile", profile="tpm"), server.issue_key("bystander")
    assert chat(server, hostile, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    # A second call queues behind the first (one a second); the huge one comes meanwhile.
    queued: list[httpx.Response] = []
    waiting = threading.Thread(
        target=chat, args=(server, hostile, {"model": MODEL, "messages": MESSAGES}, queued)
    )
    waiting.start()
    wait_until(lambda: queued_in_limiter(server) == 1, what="the second call queued")
    huge = b'{"model": "%s", "messages": %s, "max_tokens": 1%s}' % (
        MODEL.encode(),
        json.dumps(MESSAGES).encode(),
        b"0" * 400,
    )
    error = assert_error(chat(server, hostile, huge), 400, "invalid_value")
    # Refused with the body: no number in it may exceed 64 bits.
    assert (error["param"], error["message"]) == ("max_tokens", errors.MSG_NUMBER_OUT_OF_RANGE)
    waiting.join()
    assert queued[0].status_code == 200, queued[0].text
    # Another team, another model: every call answered.
    statuses = [
        chat(server, other, {"model": OTHER_MODEL, "messages": MESSAGES}).status_code
        for _ in range(10)
    ]
    assert statuses == [200] * 10
    assert "Traceback" not in server.log()


BAD_COUNTS = [
    ("max_tokens", b"1e308"),
    ("max_tokens", b"-1"),
    ("max_tokens", b"0"),
    ("max_tokens", b"true"),
    ("max_tokens", b'"5"'),
    ("max_tokens", b"12.5"),
    ("max_tokens", b"1000001"),
    ("max_tokens", b"-1" + b"0" * 400),
    ("max_completion_tokens", b"1" + b"0" * 400),
    ("max_completion_tokens", b"false"),
    ("n", b"129"),
    ("n", b"0"),
    ("n", b"true"),
    ("n", b"9223372036854775808"),
]


@pytest.mark.parametrize(
    ("field", "value"), BAD_COUNTS, ids=[f"{f}={v[:8]!r}" for f, v in BAD_COUNTS]
)
def test_counted_fields_out_of_range_are_a_400_naming_them(
    server: SluiceServer, field: str, value: bytes
) -> None:
    key = server.issue_key("counted", profile="tpm")
    body = b'{"model": "%s", "messages": %s, "%s": %s}' % (
        MODEL.encode(),
        json.dumps(MESSAGES).encode(),
        field.encode(),
        value,
    )
    error = assert_error(chat(server, key, body), 400, "invalid_value")
    assert error["param"] == field
    if b"0" * 400 not in value and value != b"9223372036854775808":
        high = sizing.MAX_N if field == "n" else sizing.MAX_COMPLETION_TOKENS
        assert error["message"] == MESSAGE.format(field=field, low=1, high=high)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (b'{"temperature": NaN}', "temperature"),
        (b'{"temperature": Infinity}', "temperature"),
        (b'{"top_p": -Infinity}', "top_p"),
        (b'{"logit_bias": {"50256": 1e999}}', "logit_bias"),
        (b'{"seed": 9223372036854775808}', "seed"),
        (b'{"seed": -9223372036854775809}', "seed"),
    ],
)
def test_numbers_no_database_holds_are_a_400_anywhere_in_the_body(
    server: SluiceServer, value: bytes, field: str
) -> None:
    key = server.issue_key("numbers")
    body = json.loads(
        value.replace(b"NaN", b"0").replace(b"Infinity", b"0").replace(b"1e999", b"0")
    )
    assert set(body) == {field}
    content = b'{"model": "%s", "messages": %s, %s' % (
        MODEL.encode(),
        json.dumps(MESSAGES).encode(),
        value[1:],
    )
    error = assert_error(chat(server, key, content), 400, "invalid_value")
    assert (error["param"], error["message"]) == (field, errors.MSG_NUMBER_OUT_OF_RANGE)


def test_numbers_in_range_still_go(server: SluiceServer) -> None:
    key = server.issue_key("in-range", profile="tpm")
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": sizing.MAX_COMPLETION_TOKENS,
        "n": 1,
        "seed": 2**63 - 1,
        "temperature": -0.0,
        "top_p": 1e-300,
    }
    assert chat(server, key, body).status_code == 200
