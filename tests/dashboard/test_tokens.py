"""Personal API tokens: the ops API with a user's token (its role, or reads only), the
audit naming the user and the token's prefix, the tokens page and `createtoken`."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from dashboard.models import TOKEN_PREFIX, AuditEntry, PersonalToken, TokenScope
from dashboard.roles import role_grant
from dashboard.services import token_create
from limiter.models import ApiKey, Team
from limiter.services import team_get_or_create
from tests.dashboard.conftest import org_user

pytestmark = pytest.mark.django_db


def bearer(secret: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {secret}"})


def issue(user: User, scope: str = TokenScope.FULL, **extra) -> tuple[PersonalToken, str]:
    issued = token_create(user=user, scope=scope, actor=user, **extra)
    return issued.token, issued.secret


@pytest.fixture
def operator() -> User:
    return org_user("olga", "operator")


def test_full_token_acts_with_the_owners_role_and_the_audit_names_it(operator):
    token, secret = issue(operator)
    api = bearer(secret)
    assert api.get("/api/teams").status_code == 200
    response = api.post("/api/teams", {"name": "search"}, content_type="application/json")
    assert response.status_code == 201, response.content
    entry = AuditEntry.objects.get(object_type="team", action="create")
    assert entry.actor == operator and entry.actor_name == "olga"
    assert entry.via == f"token {token.prefix}"
    # Through the API's audit reader too.
    items = api.get("/api/audit", {"object_type": "team"}).json()["items"]
    assert items[0]["actor_name"] == "olga" and items[0]["via"] == f"token {token.prefix}"


def test_a_valid_personal_token_is_never_throttled(operator):
    """The wrong-token throttle counts a bearer only once neither the admin token nor a
    personal token matched: a script's 31st call in a minute with its own token is served
    (it was counted as a wrong admin token, and refused 429 from then on)."""
    _, secret = issue(operator)
    api = bearer(secret)
    statuses = {api.get("/api/teams").status_code for _ in range(40)}
    assert statuses == {200}
    # Wrong tokens are still slowed (from an address of their own: the count outlives
    # the test, in this process).
    wrong = Client(headers={"Authorization": "Bearer sluice-pat-wrong"}, REMOTE_ADDR="10.9.9.9")
    assert 429 in {wrong.get("/api/teams").status_code for _ in range(40)}


def test_session_changes_carry_no_token(operator):
    client = Client()
    client.force_login(operator)
    assert (
        client.post("/api/teams", {"name": "x"}, content_type="application/json").status_code == 201
    )
    assert AuditEntry.objects.get(object_type="team").via == ""


def test_read_only_token_reads_and_is_refused_writes(operator):
    token, secret = issue(operator, scope=TokenScope.READ)
    team = team_get_or_create(name="search")[0]
    api = bearer(secret)
    assert api.get("/api/teams").status_code == 200
    assert api.get(f"/api/teams/{team.pk}/keys").status_code == 200
    before = AuditEntry.objects.exclude(action="refused").count()
    for method, path, body in [
        ("post", "/api/teams", {"name": "new"}),
        ("patch", f"/api/teams/{team.pk}", {"paused": True}),
        ("post", f"/api/teams/{team.pk}/keys", {"name": "k"}),
    ]:
        response = getattr(api, method)(path, body, content_type="application/json")
        assert response.status_code == 403, (path, response.content)
        assert response.json()["error"]["code"] == "forbidden"
    # Nothing changed, and each refusal is audited with the user and the token.
    assert not Team.objects.filter(name="new").exists()
    team.refresh_from_db()
    assert team.paused is False and not ApiKey.objects.exists()
    assert AuditEntry.objects.exclude(action="refused").count() == before
    refused = AuditEntry.objects.filter(action="refused")
    assert refused.count() == 3
    assert {(e.actor_name, e.via) for e in refused} == {("olga", f"token {token.prefix}")}


def test_full_token_cannot_exceed_its_owners_role():
    auditor = org_user("audrey", "auditor")
    _, secret = issue(auditor)
    api = bearer(secret)
    assert api.get("/api/refusals").status_code == 200
    response = api.post("/api/teams", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403 and not Team.objects.filter(name="x").exists()


def test_team_maintainers_token_keys_its_team_only():
    mine, theirs = team_get_or_create(name="a")[0], team_get_or_create(name="b")[0]
    user = User.objects.create_user("maya", password="x")
    role_grant(user=user, role="maintainer", team=mine, actor=None, source="test")
    token, secret = issue(user)
    api = bearer(secret)
    assert [t["name"] for t in api.get("/api/teams").json()] == ["a"]
    response = api.post(
        f"/api/teams/{mine.pk}/keys", {"name": "ci"}, content_type="application/json"
    )
    assert response.status_code == 201
    key_entry = AuditEntry.objects.get(object_type="apikey", action="create")
    assert key_entry.actor == user and key_entry.via == f"token {token.prefix}"
    other = api.post(f"/api/teams/{theirs.pk}/keys", {"name": "x"}, content_type="application/json")
    assert other.status_code == 404
    assert not ApiKey.objects.filter(team=theirs).exists()


def test_revoked_expired_unknown_and_inactive_tokens_are_401(operator):
    revoked, revoked_secret = issue(operator)
    PersonalToken.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    _, expired_secret = issue(operator, expires_at=timezone.now() - timedelta(seconds=1))
    other = org_user("gone", "operator")
    _, inactive_secret = issue(other)
    User.objects.filter(pk=other.pk).update(is_active=False)
    _, good_secret = issue(operator)
    for secret in (
        revoked_secret,
        expired_secret,
        inactive_secret,
        good_secret[:-1] + "x",
        TOKEN_PREFIX,
    ):
        response = bearer(secret).post("/api/teams", {"name": "x"}, content_type="application/json")
        assert response.status_code == 401, secret
        assert response.json()["error"]["code"] == "unauthenticated"
    assert not Team.objects.filter(name="x").exists()
    assert bearer(good_secret).get("/api/teams").status_code == 200


def test_last_used_is_written_at_most_once_a_minute(operator):
    token, secret = issue(operator)
    assert token.last_used_at is None
    api = bearer(secret)
    api.get("/api/teams")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    api.get("/api/teams")
    token.refresh_from_db()
    assert token.last_used_at == first  # within the minute: not written again
    PersonalToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    api.get("/api/teams")
    token.refresh_from_db()
    assert token.last_used_at > first - timedelta(minutes=1)


def test_admin_token_still_works_as_bootstrap(admin_token):
    response = bearer(admin_token).post(
        "/api/teams", {"name": "x"}, content_type="application/json"
    )
    assert response.status_code == 201
    entry = AuditEntry.objects.get(object_type="team")
    assert entry.actor is None and entry.via == ""


# --- the tokens page --------------------------------------------------------------------
def test_tokens_page_creates_shows_once_lists_and_revokes(operator):
    client = Client()
    client.force_login(operator)
    response = client.post("/tokens/", {"name": "ci", "scope": "read", "expires_in_days": "30"})
    assert response.status_code == 200
    token = PersonalToken.objects.get(user=operator)
    secret = response.context["issued"].secret
    assert secret.startswith(token.prefix) and secret.encode() in response.content
    assert token.scope == "read" and token.expires_at is not None
    assert token.secret_hash == PersonalToken.hash_secret(secret)
    created = AuditEntry.objects.get(object_type="personaltoken", action="create")
    assert created.actor == operator
    assert created.new_values["user"] == "olga" and created.new_values["prefix"] == token.prefix

    listing = client.get("/tokens/")
    assert token.prefix.encode() in listing.content and secret.encode() not in listing.content
    assert bearer(secret).get("/api/teams").status_code == 200

    response = client.post(f"/tokens/{token.pk}/revoke/")
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    revoked = AuditEntry.objects.get(object_type="personaltoken", action="revoke")
    assert revoked.actor == operator and revoked.old_values["prefix"] == token.prefix
    assert bearer(secret).get("/api/teams").status_code == 401


def test_tokens_page_form_errors_and_other_users_tokens(operator):
    client = Client()
    client.force_login(operator)
    response = client.post("/tokens/", {"scope": "root", "expires_in_days": "0"})
    assert response.status_code == 400 and b"errorlist" in response.content
    assert not PersonalToken.objects.exists()

    someone = org_user("sam", "admin")
    theirs, _ = issue(someone)
    assert theirs.prefix.encode() not in client.get("/tokens/").content
    assert client.post(f"/tokens/{theirs.pk}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_tokens_page_needs_a_role(outsider_client, client):
    assert outsider_client.get("/tokens/").status_code == 403
    assert outsider_client.post("/tokens/", {"scope": "full"}).status_code == 403
    assert not PersonalToken.objects.exists()
    assert client.get("/tokens/").status_code == 302  # anonymous: to the login page


def test_team_viewer_may_hold_a_token():
    team = team_get_or_create(name="a")[0]
    user = User.objects.create_user("vic", password="x")
    role_grant(user=user, role="viewer", team=team, actor=None, source="test")
    client = Client()
    client.force_login(user)
    response = client.post("/tokens/", {"scope": "full"})
    assert response.status_code == 200
    secret = response.context["issued"].secret
    assert [t["name"] for t in bearer(secret).get("/api/teams").json()] == ["a"]


# --- manage.py createtoken ----------------------------------------------------------------
def createtoken(*args: str) -> str:
    out = StringIO()
    call_command("createtoken", *args, stdout=out)
    return out.getvalue()


def test_createtoken_prints_the_token_once_on_the_last_line(operator):
    output = createtoken("olga", "--name", "deploy", "--expires-days", "7")
    secret = output.strip().splitlines()[-1]
    token = PersonalToken.objects.get(user=operator)
    assert secret.startswith(token.prefix) and token.scope == "full" and token.name == "deploy"
    assert token.expires_at is not None and token.expires_at > timezone.now() + timedelta(days=6)
    assert (
        bearer(secret)
        .post("/api/teams", {"name": "x"}, content_type="application/json")
        .status_code
        == 201
    )
    entry = AuditEntry.objects.get(object_type="personaltoken")
    assert entry.actor_name == "manage.py createtoken" and entry.new_values["user"] == "olga"


def test_createtoken_read_only(operator):
    secret = createtoken("olga", "--read-only").strip().splitlines()[-1]
    api = bearer(secret)
    assert api.get("/api/teams").status_code == 200
    assert api.post("/api/teams", {"name": "x"}, content_type="application/json").status_code == 403


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nobody",), "No user named 'nobody'"),
        (("plain",), "holds no role"),
        (("olga", "--expires-days", "0"), "at least 1"),
    ],
)
def test_createtoken_refuses(operator, args, message):
    User.objects.create_user("plain", password="x")
    with pytest.raises(CommandError, match=message):
        createtoken(*args)
    assert not PersonalToken.objects.exists()
