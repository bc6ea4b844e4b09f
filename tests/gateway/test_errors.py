"""Every failure path of the team API answers in OpenAI's error shape, never HTML."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from limiter.gateway import errors
from tests.servers import SluiceServer
from tests.waiting import wait_until

CHAT = "/v1/chat/completions"
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
MESSAGES = [{"role": "user", "content": "hi"}]


def assert_error(response: httpx.Response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


@pytest.fixture(scope="module")
def client(shared_server):
    key = shared_server.issue_key("errors")
    with httpx.Client(
        base_url=shared_server.url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        yield c


def test_bad_json(client):
    error = assert_error(client.post(CHAT, content=b'{"model": '), 400, "invalid_json")
    assert error["message"] == errors.MSG_BAD_JSON


def test_body_not_an_object(client):
    assert_error(client.post(CHAT, json=[1, 2]), 400, "invalid_json")


def test_missing_model(client):
    error = assert_error(client.post(CHAT, json={"messages": MESSAGES}), 400, "missing_field")
    assert error["param"] == "model"


def test_wrongly_typed_model(client):
    assert_error(client.post(CHAT, json={"model": 42, "messages": MESSAGES}), 400, "missing_field")


def test_oversized_body(client):
    huge = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    )
    assert_error(client.post(CHAT, content=huge), 413, "request_too_large")


def test_no_key(shared_server):
    response = httpx.post(f"{shared_server.url}{CHAT}", json={"model": MODEL, "messages": MESSAGES})
    assert_error(response, 401, "missing_api_key")


def test_unknown_key(shared_server):
    response = httpx.post(
        f"{shared_server.url}{CHAT}",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"authorization": "Bearer sk-sluice-not-a-key"},
    )
    assert_error(response, 401, "invalid_api_key")


def test_revoked_key(shared_server):
    key = shared_server.issue_key("revoked")
    shared_server.python(
        "from limiter.models import ApiKey; from limiter.services import key_revoke;"
        f"key_revoke(key=ApiKey.objects.get(secret_hash=ApiKey.hash_secret({key!r})))"
    )
    response = httpx.post(
        f"{shared_server.url}{CHAT}",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
    )
    assert_error(response, 401, "invalid_api_key")


def test_unknown_route(client):
    error = assert_error(client.get("/v1/nothing-here"), 404, "unknown_url")
    assert "/v1/nothing-here" in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/nothing-here"),
        ("GET", "/v1/fine-tuning/jobs"),
        ("GET", "/v2/nothing/else"),
        ("DELETE", "/v2"),
        ("GET", "/v1"),
        ("GET", "/v2/videos/a/b/c"),
    ],
)
def test_every_unserved_route_under_v1_and_v2_is_a_json_404_naming_it(client, method, path):
    """Routes of Together's that Sluice does not serve, /v2/ ones (which once fell through
    to Django's HTML 404 page) included: OpenAI's shape, the route named."""
    response = client.request(method, path)
    error = assert_error(response, 404, "unknown_url")
    assert error["type"] == errors.NOT_FOUND
    assert error["message"] == errors.MSG_UNKNOWN_ROUTE.format(method=method, path=path)
    assert "<html" not in response.text.lower()


def test_unknown_route_echoes_a_bounded_path(client):
    path = "/v2/" + "x" * 5000
    error = assert_error(client.get(path), 404, "unknown_url")
    assert len(error["message"]) < errors.MAX_ECHOED_PATH + 200


def test_the_refused_route_answer_names_the_route_and_echoes_a_bounded_path():
    """Organisation-level routes are refused with a 403 (tests/gateway/test_org_routes.py
    over HTTP); the answer names the route and bounds what it echoes of the caller's path."""
    refused = errors.refused_route(
        method="POST", path="/v1/billing/usage", kind="org_billing", what="billing"
    )
    assert refused.status == 403
    body = json.loads(refused.body())["error"]
    assert body["type"] == errors.PERMISSION and body["code"] == "route_not_allowed"
    assert "POST /v1/billing/usage" in body["message"] and "'org_billing'" in body["message"]
    long = errors.refused_route(method="GET", path="/v1/rl/" + "x" * 5000, kind="k", what="w")
    assert len(json.loads(long.body())["error"]["message"]) < errors.MAX_ECHOED_PATH + 300


def test_wrong_method(client):
    response = client.get(CHAT)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_unknown_model_names_the_closest(client):
    error = assert_error(
        client.post(
            CHAT, json={"model": "meta-llama/Llama-3.3-70B-Instruct", "messages": MESSAGES}
        ),
        404,
        "model_not_found",
    )
    assert MODEL in error["message"]


def test_request_id_is_returned_and_forwarded(shared_server, client):
    response = client.post(
        CHAT, json={"model": MODEL, "messages": MESSAGES}, headers={"x-request-id": "trace-123"}
    )
    assert response.headers["x-request-id"] == "trace-123"
    assert shared_server.sandbox.stats()["seen_headers"]["x-request-id"] == "trace-123"


def test_upstream_503_storm_retries_then_a_clear_503(shared_server, client):
    shared_server.sandbox.configure({"fail_next": [503] * 4})
    started = time.monotonic()
    error = assert_error(
        client.post(CHAT, json={"model": MODEL, "messages": MESSAGES}), 503, "upstream_overloaded"
    )
    assert "4 attempts" in error["message"]
    assert time.monotonic() - started < 30
    assert shared_server.sandbox.stats()["chat"]["status_503"] >= 4


def test_overloaded_model_is_served_by_the_fallback(shared_server):
    fallback = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
    shared_server.python(
        "from limiter.models import LimitProfile;"
        "p = LimitProfile.objects.create(name='with-fallback');"
        "[setattr(r, 'pk', None) or setattr(r, 'profile', p) or r.save() for r in "
        " LimitProfile.objects.get(name='default').limits.all()];"
        f"p.model_fallbacks = {{{MODEL!r}: {fallback!r}}}; p.save()"
    )
    key = shared_server.issue_key("fallback", profile="with-fallback")
    shared_server.sandbox.configure({"overloaded_models": [MODEL]})
    try:
        response = httpx.post(
            f"{shared_server.url}{CHAT}",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
            timeout=60,
        )
    finally:
        shared_server.sandbox.configure({"overloaded_models": []})
    assert response.status_code == 200, response.text
    assert response.headers["x-sluice-fallback-model"] == fallback
    assert response.json()["model"] == fallback


def test_refusals_are_recorded(shared_server):
    shared_server.make_profile(
        "no-room",
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
    key = shared_server.issue_key("recorded", profile="no-room")
    headers = {"authorization": f"Bearer {key}", "x-request-id": "audit-me"}
    httpx.post(
        f"{shared_server.url}{CHAT}", json={"model": MODEL, "messages": MESSAGES}, headers=headers
    )
    refused = httpx.post(
        f"{shared_server.url}{CHAT}", json={"model": MODEL, "messages": MESSAGES}, headers=headers
    )
    assert_error(refused, 429, "rate_limited")
    # The recorder writes once a second, off the request path: wait for the row to land.
    api = httpx.Client(
        base_url=shared_server.url, headers={"authorization": f"Bearer {shared_server.admin_token}"}
    )
    wait_until(
        lambda: [row["request_id"] for row in api.get("/api/refusals").json()["items"]],
        lambda ids: "audit-me" in ids,
        what="the refusal recorded",
    )
    row = shared_server.python(
        "from limiter.models import Refusal;"
        "r = Refusal.objects.get(request_id='audit-me');"
        "print(r.team_name, r.key_prefix, r.endpoint, r.model, r.reason, r.source,"
        " round(r.retry_after_seconds))"
    ).split()
    assert row == ["recorded", key[:16], "chat", MODEL, "rate_limited", "gateway", "60"]


def test_upstream_unreachable(tmp_path):
    with SluiceServer(
        tmp_path,
        env={"TOGETHER_BASE_URL": "http://127.0.0.1:9/v1", "SLUICE_UPSTREAM_DEADLINE": "3"},
    ) as server:
        key = server.issue_key("lonely")
        response = httpx.post(
            f"{server.url}{CHAT}",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        error = assert_error(response, 502, "upstream_unreachable")
        # The team learns it failed and which request it was, not where Together lives.
        request_id = response.headers["x-request-id"]
        assert "127.0.0.1" not in response.text and ":9" not in response.text
        assert error["message"] == errors.MSG_UPSTREAM_DOWN.format(request_id=request_id)
        # The operators learn where: the log line carries the request id and the detail...
        assert any(
            request_id in line and "127.0.0.1:9" in line for line in server.log().splitlines()
        )
        # ...and the dashboard shows the account's last failure.
        with httpx.Client(base_url=server.url, timeout=30) as staff:
            staff.get("/login/")
            staff.post(
                "/login/",
                data={
                    "username": server.admin_username,
                    "password": server.admin_password,
                    "csrfmiddlewaretoken": staff.cookies["csrftoken"],
                },
            )
            page = staff.get("/")
        assert page.status_code == 200
        assert "127.0.0.1:9" in page.text and "upstream-failures" in page.text


def test_upstream_429_carries_the_callers_own_quota_headers(shared_server, client):
    served = client.post(CHAT, json={"model": MODEL, "messages": MESSAGES})
    limit = served.headers["x-ratelimit-limit-requests"]  # what this key's 200s say
    shared_server.sandbox.configure({"fail_next": [429] * 4, "inject_retry_after_s": 0.05})
    try:
        response = client.post(CHAT, json={"model": MODEL, "messages": MESSAGES})
    finally:
        shared_server.sandbox.configure({"fail_next": [], "inject_retry_after_s": 1.0})
    assert_error(response, 429, "upstream_rate_limited")
    assert response.headers["x-sluice-limited-by"] == "upstream"
    assert response.headers["x-ratelimit-limit-requests"] == limit
    assert 0 <= int(response.headers["x-ratelimit-remaining-requests"]) < int(limit)
    assert response.headers["x-ratelimit-reset-requests"]
    assert response.headers["retry-after"] and response.headers["retry-after-ms"]


def test_limiter_down_is_a_clear_503_not_a_hang(tmp_path):
    with SluiceServer(
        tmp_path, env={"SLUICE_EMBEDDED_LIMITER": "0", "SLUICE_LIMITER_TIMEOUT": "0.5"}
    ) as server:
        key = server.issue_key("no-limiter")
        started = time.monotonic()
        response = httpx.post(
            f"{server.url}{CHAT}",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert time.monotonic() - started < 5
        error = assert_error(response, 503, "limiter_unavailable")
        assert error["message"] == errors.MSG_LIMITER_DOWN
        assert httpx.get(f"{server.url}/readyz").status_code == 503
