"""An upstream account's base URL is where its key goes: only a host on
SLUICE_UPSTREAM_ALLOWED_HOSTS (or TOGETHER_BASE_URL's own), over https but to loopback.
Refused on save (the model's clean, so the admin: tests/dashboard/test_admin.py), and
again before every send, so a row written around the model cannot leak the key either."""

from __future__ import annotations

import httpx
import pytest

from limiter.models import MSG_UPSTREAM_HOST, MSG_UPSTREAM_SCHEME, upstream_url_error
from tests.alerts.receiver import Receiver
from tests.gateway.test_errors import MESSAGES, MODEL, assert_error
from tests.servers import SluiceServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with SluiceServer(tmp_path_factory.mktemp("hosts")) as sluice:
        yield sluice


def test_no_call_goes_to_a_base_url_off_the_allow_list(server: SluiceServer) -> None:
    # The server's upstream is the sandbox on 127.0.0.1 (TOGETHER_BASE_URL); `localhost`
    # is another host, on no list: a row naming it, written straight to the database
    # (as an admin edit before this check, or raw SQL, would leave it), gets nothing.
    with Receiver() as elsewhere:
        server.python(
            "from limiter.models import Team, UpstreamAccount, LimitProfile\n"
            "profile = LimitProfile.objects.get(name='default')\n"
            "account = UpstreamAccount.objects.create(name='moved', profile=profile,"
            f" base_url='http://localhost:{elsewhere.port}/v1')\n"
            "Team.objects.create(name='moved', profile=profile, upstream=account)\n"
        )
        key = server.issue_key("moved")
        log_before = server.log()
        answer = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert_error(answer, 502, "upstream_unreachable")
        assert f"localhost:{elsewhere.port}" not in answer.text
        assert elsewhere.headers == []  # no request at all, so no bearer
    logged = server.log()[len(log_before) :]
    assert "ERROR" in logged and "is not allowed" in logged


@pytest.mark.parametrize(
    ("base_url", "error"),
    [
        ("", None),  # TOGETHER_BASE_URL
        ("https://api.together.xyz/v1", None),
        ("https://API.Together.xyz./v1", None),
        ("https://api.together.xyz:443/v1", None),
        ("http://api.together.xyz/v1", MSG_UPSTREAM_SCHEME),
        ("https://evil.example/v1", MSG_UPSTREAM_HOST),
        ("https://api.together.xyz.evil.example/v1", MSG_UPSTREAM_HOST),
        ("https://api.together.xyz@evil.example/v1", MSG_UPSTREAM_HOST),
        ("https://evil.example/api.together.xyz/v1", MSG_UPSTREAM_HOST),
        ("http://127.0.0.1:8000/v1", MSG_UPSTREAM_HOST),
        ("http://169.254.169.254/v1", MSG_UPSTREAM_HOST),
        ("https://[::1/v1", MSG_UPSTREAM_HOST),  # does not parse
    ],
)
def test_the_allow_list_by_default(settings, base_url: str, error: str | None) -> None:
    settings.TOGETHER_BASE_URL = "https://api.together.xyz/v1"
    settings.SLUICE_UPSTREAM_ALLOWED_HOSTS = ["api.together.xyz"]
    assert upstream_url_error(base_url) == error


def test_loopback_may_be_plain_http_and_together_base_urls_own_origin_too(settings) -> None:
    settings.TOGETHER_BASE_URL = "http://relay.internal:8080/v1"
    settings.SLUICE_UPSTREAM_ALLOWED_HOSTS = [
        "api.together.xyz",
        "127.0.0.1",
        "[::1]",
        "eu.example",
    ]
    assert upstream_url_error("http://127.0.0.1:9000/v1") is None
    assert upstream_url_error("http://[::1]:9000/v1") is None
    assert upstream_url_error("http://relay.internal:8080/other") is None
    assert upstream_url_error("http://relay.internal:9090/v1") == MSG_UPSTREAM_SCHEME
    assert upstream_url_error("https://relay.internal/v1") is None
    assert upstream_url_error("http://eu.example/v1") == MSG_UPSTREAM_SCHEME
    assert upstream_url_error("https://eu.example/v1") is None
