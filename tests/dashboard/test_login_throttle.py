"""Staff sign-in is throttled per account and per address, over real HTTP: past
LOGIN_FAILURES_PER_MINUTE failures a login is refused before its password is checked
(a form error), except from a browser that logged in to that account before; wrong
admin tokens past their limit get 429 with Retry-After, and the right token never does.
Each test sends from its own loopback addresses and uses its own account."""

from __future__ import annotations

import httpx

from dashboard.api import MSG_THROTTLED
from dashboard.auth_throttle import (
    ADMIN_TOKEN_FAILURES_PER_MINUTE,
    DEVICE_COOKIE,
    LOGIN_FAILURES_PER_MINUTE,
)
from tests.servers import SluiceServer

THROTTLED = "Too many failed logins"


def browser(server: SluiceServer, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=server.url, transport=transport, timeout=30)


def create_staff(server: SluiceServer, username: str, password: str) -> None:
    server.python(
        "from django.contrib.auth import get_user_model;"
        f"get_user_model().objects.create_user({username!r}, password={password!r},"
        " is_staff=True)"
    )


def log_in(client: httpx.Client, username: str, password: str) -> httpx.Response:
    client.get("/login/")
    return client.post(
        "/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )


def assert_logged_in(response: httpx.Response) -> None:
    assert response.status_code == 302, response.text[:500]


def assert_refused(response: httpx.Response, throttled: bool) -> None:
    assert response.status_code == 200  # the form again, with its error
    assert (THROTTLED in response.text) is throttled, response.text[:2000]


def test_an_address_that_keeps_failing_is_refused_before_the_password_is_checked(
    shared_server: SluiceServer,
) -> None:
    create_staff(shared_server, "addr-ops", "right-password-1")
    guesser = browser(shared_server, "127.0.0.61")
    for i in range(LOGIN_FAILURES_PER_MINUTE):
        # Different accounts: only the address's count reaches the limit.
        assert_refused(log_in(guesser, f"nobody-{i}", "guess"), throttled=False)
    assert_refused(log_in(guesser, "addr-ops", "right-password-1"), throttled=True)
    # Another address is not slowed by this one's failures.
    assert_logged_in(log_in(browser(shared_server, "127.0.0.62"), "addr-ops", "right-password-1"))


def test_an_account_guessed_from_many_addresses_is_refused_but_not_on_its_own_browser(
    shared_server: SluiceServer,
) -> None:
    create_staff(shared_server, "acct-ops", "right-password-2")
    own = browser(shared_server, "127.0.0.70")
    assert_logged_in(log_in(own, "acct-ops", "right-password-2"))
    assert DEVICE_COOKIE in own.cookies
    own.post("/logout/", data={"csrfmiddlewaretoken": own.cookies["csrftoken"]})

    for i in range(LOGIN_FAILURES_PER_MINUTE):
        guesser = browser(shared_server, f"127.0.0.{71 + i}")
        assert_refused(log_in(guesser, "acct-ops", f"guess-{i}"), throttled=False)
    # The account is over its limit: a new browser is refused, even with the right password.
    assert_refused(
        log_in(browser(shared_server, "127.0.0.90"), "acct-ops", "right-password-2"),
        throttled=True,
    )
    # Its owner's browser is not, and a forged device cookie opens nothing.
    assert_logged_in(log_in(own, "acct-ops", "right-password-2"))
    forged = browser(shared_server, "127.0.0.91")
    forged.cookies.set(DEVICE_COOKIE, "acct-ops")
    assert_refused(log_in(forged, "acct-ops", "right-password-2"), throttled=True)


def test_wrong_admin_tokens_are_throttled_and_the_right_one_never_is(
    shared_server: SluiceServer,
) -> None:
    api = browser(shared_server, "127.0.0.95")
    for i in range(ADMIN_TOKEN_FAILURES_PER_MINUTE):
        answer = api.get("/api/teams", headers={"authorization": f"Bearer wrong-{i}"})
        assert answer.status_code == 401, f"failure {i + 1}: {answer.text}"
    answer = api.get("/api/teams", headers={"authorization": "Bearer wrong-again"})
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["message"] == MSG_THROTTLED
    assert 0 < int(answer.headers["retry-after"]) <= 60
    right = api.get("/api/teams", headers={"authorization": f"Bearer {shared_server.admin_token}"})
    assert right.status_code == 200, right.text
