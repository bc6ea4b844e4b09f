"""Sign-ins, failed sign-ins and sign-outs reach the audit log with their address,
whichever way they came (the sign-in form, the admin's, an identity provider)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from dashboard.audit import (
    ACTION_SIGN_IN,
    ACTION_SIGN_IN_FAILED,
    ACTION_SIGN_OUT,
    sign_in_record,
)


@receiver(user_logged_in, dispatch_uid="sluice_sign_in")
def _signed_in(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    sign_in_record(request=request, user=user, username=user.get_username(), action=ACTION_SIGN_IN)


@receiver(user_login_failed, dispatch_uid="sluice_sign_in_failed")
def _sign_in_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    # Django has already masked the password in `credentials`; only the username is kept.
    sign_in_record(
        request=request,
        user=None,
        username=str(credentials.get("username", "")),
        action=ACTION_SIGN_IN_FAILED,
    )


@receiver(user_logged_out, dispatch_uid="sluice_sign_out")
def _signed_out(sender: Any, request: HttpRequest | None, user: User | None, **kwargs: Any) -> None:
    if user is not None:
        sign_in_record(
            request=request, user=user, username=user.get_username(), action=ACTION_SIGN_OUT
        )
