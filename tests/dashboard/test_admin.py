"""The admin (/admin/) as a superuser: every add, change and delete is in the audit log
like a dashboard change (secrets only as "changed"), and an upstream account's base URL
must name an allowed host (SLUICE_UPSTREAM_ALLOWED_HOSTS)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.test import Client

from dashboard.admin import SECRET_CHANGED, AuditedAdmin
from dashboard.models import AuditEntry
from limiter import services
from limiter.models import (
    MSG_UPSTREAM_HOST,
    MSG_UPSTREAM_SCHEME,
    ConfigVersion,
    DedicatedModel,
    EndpointLimit,
    LimitProfile,
    Team,
    UpstreamAccount,
)
from limiter.services import key_issue, profile_default, team_get_or_create
from tests.dashboard.conftest import org_user


class _Form(HTMLParser):
    """The fields of a page's form as a browser would post them unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        name = a.get("name", "")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self.data[name] = a.get("value", "on")
            else:
                self.data[name] = a.get("value", "")
        elif tag == "select" and name:
            self._select = name
            self.data.setdefault(name, "")
        elif tag == "option" and self._select and "selected" in a:
            self.data[self._select] = a.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea] += (
                data.lstrip("\n") if not self.data[self._textarea] else data
            )


def form_of(client: Client, path: str) -> dict[str, str]:
    page = client.get(path)
    assert page.status_code == 200, path
    parser = _Form()
    parser.feed(page.content.decode())
    parser.data.pop("_save", None)
    return parser.data


@pytest.fixture
def superuser(django_user_model) -> User:
    return django_user_model.objects.create_superuser("root", password="root-password-1")


@pytest.fixture
def admin_client(superuser: User) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


def entries(object_type: str, action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(object_type=object_type, action=action))


def test_every_model_in_the_admin_is_audited() -> None:
    assert admin.site._registry
    for model, model_admin in admin.site._registry.items():
        assert isinstance(model_admin, AuditedAdmin), model
    assert User in admin.site._registry and Group in admin.site._registry


def test_an_admin_change_is_in_the_audit_log_with_who_and_what(admin_client, superuser):
    team = team_get_or_create(name="search")[0]
    path = f"/admin/limiter/team/{team.pk}/change/"
    data = form_of(admin_client, path)
    data["paused"] = "on"
    done = admin_client.post(path, data)
    assert done.status_code == 302, done.content.decode()[:2000]

    [entry] = entries("team", "admin_change")
    assert entry.actor == superuser and entry.actor_name == "root"
    assert entry.object_id == str(team.pk) and entry.object_repr == "search"
    assert entry.old_values == {"paused": False}
    assert entry.new_values == {"paused": True}
    # The ops API reads it like any other change.
    api = admin_client.get("/api/audit", {"object_type": "team"})
    assert api.status_code == 200
    [shown] = [e for e in api.json()["items"] if e["action"] == "admin_change"]
    assert shown["new_values"] == {"paused": True} and shown["actor_name"] == "root"


def test_admin_adds_and_deletes_one_and_in_bulk_are_audited(admin_client):
    profile = profile_default()
    add = form_of(admin_client, "/admin/limiter/team/add/")
    account = UpstreamAccount.objects.get(is_default=True)
    add.update({"name": "newcomer", "profile": str(profile.pk), "upstream": str(account.pk)})
    assert admin_client.post("/admin/limiter/team/add/", add).status_code == 302
    team = Team.objects.get(name="newcomer")
    [created] = entries("team", "admin_create")
    assert created.object_id == str(team.pk)
    assert created.new_values["name"] == "newcomer"
    assert created.new_values["profile"] == profile.name

    done = admin_client.post(f"/admin/limiter/team/{team.pk}/delete/", {"post": "yes"})
    assert done.status_code == 302 and not Team.objects.filter(pk=team.pk).exists()
    [deleted] = entries("team", "admin_delete")
    assert deleted.object_id == str(team.pk) and deleted.old_values["name"] == "newcomer"

    # The changelist's "delete selected" action: one entry per row.
    rows = [team_get_or_create(name=name)[0] for name in ("bulk-a", "bulk-b")]
    done = admin_client.post(
        "/admin/limiter/team/",
        {"action": "delete_selected", "_selected_action": [t.pk for t in rows], "post": "yes"},
    )
    assert done.status_code == 302
    assert not Team.objects.filter(name__startswith="bulk-").exists()
    assert {e.object_repr for e in entries("team", "admin_delete")} == {
        "newcomer",
        "bulk-a",
        "bulk-b",
    }


def test_a_limit_changed_inline_on_its_profile_is_audited(admin_client):
    profile = LimitProfile.objects.create(name="inline")
    limit = EndpointLimit.objects.create(profile=profile, endpoint="chat", requests_per_minute=60)
    path = f"/admin/limiter/limitprofile/{profile.pk}/change/"
    data = form_of(admin_client, path)
    [field] = [n for n in data if n.endswith("-requests_per_minute") and "__prefix__" not in n]
    data[field] = "6000"
    done = admin_client.post(path, data)
    assert done.status_code == 302, done.content.decode()[:3000]
    limit.refresh_from_db()
    assert limit.requests_per_minute == 6000
    [entry] = entries("endpointlimit", "admin_change")
    assert entry.object_id == str(limit.pk)
    assert entry.old_values == {"requests_per_minute": 60}
    assert entry.new_values == {"requests_per_minute": 6000}
    assert not entries("limitprofile", "admin_change")  # the profile itself did not change


def test_secrets_changed_in_the_admin_are_recorded_as_changed_only(admin_client):
    user = User.objects.create_user("someone", password="old-password-123")
    old_hash = user.password
    path = f"/admin/auth/user/{user.pk}/password/"
    done = admin_client.post(
        path,
        {
            "password1": "A-new-password-456",
            "password2": "A-new-password-456",
            "usable_password": "true",
        },
    )
    assert done.status_code == 302, done.content.decode()[:2000]
    user.refresh_from_db()
    assert user.password != old_hash
    [entry] = entries("user", "admin_change")
    assert entry.old_values == {"password": SECRET_CHANGED}
    assert entry.new_values == {"password": SECRET_CHANGED}

    # A key's hash is never shown by the admin nor written to the log.
    key = key_issue(team=team_get_or_create(name="search")[0], name="prod").key
    path = f"/admin/limiter/apikey/{key.pk}/change/"
    data = form_of(admin_client, path)
    data["name"] = "renamed"
    assert admin_client.post(path, data).status_code == 302
    [entry] = entries("apikey", "admin_change")
    assert entry.new_values == {"name": "renamed"}
    for row in AuditEntry.objects.all():
        text = f"{row.old_values} {row.new_values}"
        assert key.secret_hash not in text and old_hash not in text and user.password not in text


# --- upstream accounts: where the bearer may go -----------------------------------------------
@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("https://evil.example/v1", MSG_UPSTREAM_HOST),
        ("https://api.together.xyz.evil.example/v1", MSG_UPSTREAM_HOST),
        ("http://10.0.0.1/v1", MSG_UPSTREAM_HOST),
        ("http://api.together.xyz/v1", MSG_UPSTREAM_SCHEME),
    ],
)
def test_an_account_base_url_off_the_allow_list_is_refused_in_the_admin(
    admin_client, base_url, message
):
    account = UpstreamAccount.objects.get(is_default=True)
    before = account.base_url
    path = f"/admin/limiter/upstreamaccount/{account.pk}/change/"
    data = form_of(admin_client, path)
    data["base_url"] = base_url
    answer = admin_client.post(path, data)
    assert answer.status_code == 200  # the form again, with the error
    assert message in answer.content.decode()
    account.refresh_from_db()
    assert account.base_url == before
    assert not entries("upstreamaccount", "admin_change")


def test_an_allowed_base_url_is_saved_and_audited(admin_client, settings):
    settings.SLUICE_UPSTREAM_ALLOWED_HOSTS = ["api.together.xyz", "together-eu.example"]
    account = UpstreamAccount.objects.get(is_default=True)
    path = f"/admin/limiter/upstreamaccount/{account.pk}/change/"
    data = form_of(admin_client, path)
    data["base_url"] = "https://together-eu.example/v1"
    assert admin_client.post(path, data).status_code == 302
    account.refresh_from_db()
    assert account.base_url == "https://together-eu.example/v1"
    [entry] = entries("upstreamaccount", "admin_change")
    assert entry.new_values == {"base_url": "https://together-eu.example/v1"}


def test_a_role_given_as_a_group_in_the_admin_makes_the_user_staff_and_is_audited(
    admin_client, django_user_model
):
    """Groups are organisation roles: given one in /admin/, a user becomes staff (Django's
    admin sign-in asks it) as `manage.py adduser` would make them; taken away, not."""
    user = django_user_model.objects.create_user("ana", password="ana-password-1")
    path = f"/admin/auth/user/{user.pk}/change/"
    data = form_of(admin_client, path)
    data.pop("user_permissions", None)  # a multiple select the form parser reads as ""
    data["groups"] = str(Group.objects.get(name="auditor").pk)
    done = admin_client.post(path, data)
    assert done.status_code == 302, done.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.is_staff and [g.name for g in user.groups.all()] == ["auditor"]
    [entry] = entries("user", "admin_change")
    assert entry.new_values["groups"] == ["auditor"]

    data = form_of(admin_client, path)
    data.pop("user_permissions", None)
    data.pop("groups", None)
    assert admin_client.post(path, data).status_code == 302
    user.refresh_from_db()
    assert not user.is_staff and not user.groups.exists()


def test_an_operator_marks_a_model_dedicated_in_the_admin_audited(db) -> None:
    """Ops mark a model served on a dedicated endpoint by hand: a configuration change
    (the limiter reloads), audited, and a row the endpoint poll leaves alone."""
    operator = org_user("operator-1", "operator")
    client = Client()
    client.force_login(operator)
    add = form_of(client, "/admin/limiter/dedicatedmodel/add/")
    assert add["by_hand"] == "on"  # the form starts as ops' own mark
    account = UpstreamAccount.objects.get(is_default=True)
    add.update({"account": str(account.pk), "model": "org/dedicated-model"})
    version = ConfigVersion.current()

    assert client.post("/admin/limiter/dedicatedmodel/add/", add).status_code == 302

    row = DedicatedModel.objects.get(model="org/dedicated-model")
    assert row.by_hand
    assert ConfigVersion.current() > version
    [created] = entries("dedicatedmodel", "admin_create")
    assert created.new_values["model"] == "org/dedicated-model"
    assert services.dedicated_sync(account=account, found={}) is False  # the poll keeps it
    # An auditor sees the rows but cannot add one.
    auditor = Client()
    auditor.force_login(org_user("auditor-1", "auditor"))
    assert auditor.get("/admin/limiter/dedicatedmodel/").status_code == 200
    assert auditor.get("/admin/limiter/dedicatedmodel/add/").status_code == 403
