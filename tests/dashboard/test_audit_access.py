"""Sign-ins, failed sign-ins and sign-outs in the audit log, with who and from where."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from dashboard.audit import ACTION_SIGN_IN, ACTION_SIGN_IN_FAILED, ACTION_SIGN_OUT
from dashboard.models import AuditEntry

pytestmark = pytest.mark.django_db


def test_sign_in_failure_and_sign_out_are_audited_with_the_address() -> None:
    user = User.objects.create_user("ann", password="right-password")
    client = Client(REMOTE_ADDR="10.1.2.3")

    client.post("/login/", {"username": "ann", "password": "wrong"})
    client.post("/login/", {"username": "ann", "password": "right-password"})
    client.post("/logout/")

    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.action, e.actor, e.actor_name) for e in entries] == [
        (ACTION_SIGN_IN_FAILED, None, "ann"),
        (ACTION_SIGN_IN, user, "ann"),
        (ACTION_SIGN_OUT, user, "ann"),
    ]
    assert {e.new_values["address"] for e in entries} == {"10.1.2.3"}
    assert all("wrong" not in str(e.new_values) for e in entries)  # never the password
