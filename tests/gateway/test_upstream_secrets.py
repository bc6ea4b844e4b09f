"""An upstream account names the environment variable holding its key, and only
TOGETHER_API_KEY or SLUICE_UPSTREAM_KEY_* qualify: a staff user editing accounts must
not be able to send SECRET_KEY (or any other secret) as a bearer to a URL of their
choosing. Refused on save (model clean(), so the admin), and again when resolving."""

from __future__ import annotations

import logging

import httpx
import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from limiter.models import UpstreamAccount
from limiter.services import profile_default
from limiter.upstream import resolve_target, sandbox_api_key
from tests.gateway.test_errors import MESSAGES, MODEL, assert_error
from tests.servers import SluiceServer

SECOND_KEY = "sk-together-second-account"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    env = {"SLUICE_UPSTREAM_KEY_SECOND": SECOND_KEY}
    with SluiceServer(tmp_path_factory.mktemp("secrets"), env=env) as sluice:
        yield sluice


def team_on_account(server: SluiceServer, team: str, api_key_setting: str) -> str:
    """A key of a new team routed to a new account naming `api_key_setting`, written
    straight to the database (as a bad row from before this check would be)."""
    server.python(
        "from limiter.models import Team, UpstreamAccount, LimitProfile\n"
        "profile = LimitProfile.objects.get(name='default')\n"
        f"account = UpstreamAccount.objects.create(name={team!r}, "
        f"api_key_setting={api_key_setting!r}, profile=profile)\n"
        f"Team.objects.create(name={team!r}, profile=profile, upstream=account)\n"
    )
    return server.issue_key(team)


def chat(server: SluiceServer, key: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_an_account_cannot_send_secret_key_upstream(server: SluiceServer) -> None:
    # The upstream accepts exactly SECRET_KEY: it is served only if Sluice sends it.
    server.sandbox.configure({"api_key": server.env["SECRET_KEY"]})
    try:
        key = team_on_account(server, "exfiltrate", "SECRET_KEY")
        log_before = server.log()
        response = chat(server, key)
    finally:
        server.sandbox.configure({"api_key": None})
    assert_error(response, 502, "upstream_auth_failed")
    logged = server.log()[len(log_before) :]
    assert "SECRET_KEY" in logged and "ERROR" in logged
    assert server.env["SECRET_KEY"] not in logged


def test_a_sluice_upstream_key_variable_is_used(server: SluiceServer) -> None:
    server.sandbox.configure({"api_key": SECOND_KEY})
    try:
        response = chat(server, team_on_account(server, "second", "SLUICE_UPSTREAM_KEY_SECOND"))
    finally:
        server.sandbox.configure({"api_key": None})
    assert response.status_code == 200, response.text


# --- on save: the model and the admin ------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "SECRET_KEY",
        "DATABASE_URL",
        "SLUICE_ADMIN_TOKEN",
        "PATH",
        "together_api_key",
        "SLUICE_UPSTREAM_KEY_",
        "SLUICE_UPSTREAM_KEY_a",
        "TOGETHER_API_KEY_2",
        "",
    ],
)
def test_clean_refuses_other_names(db, name: str) -> None:
    account = UpstreamAccount(name="x", api_key_setting=name, profile=profile_default())
    with pytest.raises(ValidationError) as refused:
        account.full_clean()
    assert "api_key_setting" in refused.value.message_dict


@pytest.mark.parametrize(
    "name", ["TOGETHER_API_KEY", "SLUICE_UPSTREAM_KEY_SECOND", "SLUICE_UPSTREAM_KEY_EU_2"]
)
def test_clean_accepts_upstream_key_names(db, name: str) -> None:
    UpstreamAccount(name="x", api_key_setting=name, profile=profile_default()).full_clean()


def test_the_admin_refuses_a_secret_name(db, django_user_model) -> None:
    admin = django_user_model.objects.create_superuser("root", password="root-password")
    client = Client()
    client.force_login(admin)
    account = UpstreamAccount.objects.get(is_default=True)
    response = client.post(
        f"/admin/limiter/upstreamaccount/{account.pk}/change/",
        {
            "name": account.name,
            "base_url": "https://attacker.example/v1",
            "api_key_setting": "SECRET_KEY",
            "profile": account.profile_id,
            "is_default": "on",
        },
    )
    assert response.status_code == 200  # the form again, with the error
    assert "api_key_setting" in response.context["adminform"].form.errors
    account.refresh_from_db()
    assert account.api_key_setting == "TOGETHER_API_KEY" and account.base_url == ""


# --- when resolving -------------------------------------------------------------------------------
def test_resolving_reads_only_upstream_key_variables(settings, monkeypatch, caplog) -> None:
    settings.SECRET_KEY = "not-for-together"
    settings.SLUICE_SANDBOX = False
    monkeypatch.setenv("SLUICE_UPSTREAM_KEY_EU", "sk-eu")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")

    def key(setting: str) -> str:
        return resolve_target(
            account_id="1", account_name="a", base_url="", api_key_setting=setting
        ).api_key

    with caplog.at_level(logging.ERROR, logger="limiter.upstream"):
        assert key("SECRET_KEY") == ""
        assert key("DATABASE_PASSWORD") == ""
        assert key("DATABASE_PASSWORD") == ""
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]  # once per name
    assert "hunter2" not in caplog.text and "not-for-together" not in caplog.text
    assert key("SLUICE_UPSTREAM_KEY_EU") == "sk-eu"
    settings.TOGETHER_API_KEY = "sk-default"
    assert key("TOGETHER_API_KEY") == "sk-default"


def test_resolving_an_invalid_name_in_sandbox_mode_sends_the_sandbox_key(settings) -> None:
    settings.SLUICE_SANDBOX = True
    target = resolve_target(
        account_id="1", account_name="a", base_url="", api_key_setting="SECRET_KEY_TOO"
    )
    assert target.api_key == sandbox_api_key() != settings.SECRET_KEY
