"""Single sign-on through OpenID Connect, with mozilla-django-oidc: the authorization code
flow with PKCE, users created at their first sign-in and their roles re-read from the
provider's roles claim at every sign-in (SLUICE_OIDC_ROLE_MAP, dashboard/oidc_config.py).

Imported only when SLUICE_OIDC_ISSUER is set (dashboard/urls.py, AUTHENTICATION_BACKENDS):
with it unset, sign-in is Django's password login, unchanged.

A person is known by the provider's `sub` (OidcIdentity), never by an email address or a
username, which a provider may let its users choose: a local account of the same name is
not taken over.
"""

from __future__ import annotations

import functools
import logging
from typing import Any
from urllib.parse import urlencode

import httpx
import requests
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.auth.views import LoginView
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
    OIDCLogoutView,
)

from dashboard.access import public
from dashboard.models import OidcIdentity
from dashboard.oidc_config import claim_values, roles_from_claim
from dashboard.policy import roles_forget, roles_of
from dashboard.roles import roles_set

log = logging.getLogger(__name__)

SOURCE = "oidc"  # the audit entries' source for roles read from the provider

MSG_PROVIDER_FAILED = "The identity provider did not answer as expected; try again later."
MSG_SIGN_IN_FAILED = "Signing in through the identity provider did not complete."

# Our name for an endpoint -> its key in the provider's discovery document.
DISCOVERY_KEYS = {
    "AUTHORIZATION": "authorization_endpoint",
    "TOKEN": "token_endpoint",
    "USERINFO": "userinfo_endpoint",
    "JWKS": "jwks_uri",
    "END_SESSION": "end_session_endpoint",  # optional: RP-initiated logout
}
REQUIRED = ("AUTHORIZATION", "TOKEN", "USERINFO", "JWKS")


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be had, or lacks an endpoint."""


@functools.cache
def provider_metadata() -> dict[str, Any]:
    """The provider's discovery document, fetched once per process at the first sign-in
    (a failure is not cached: the next sign-in asks again)."""
    url = f"{settings.SLUICE_OIDC_ISSUER}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ProviderUnavailable(f"{url}: {exc}") from exc
    # OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked.
    if not isinstance(document, dict) or document.get("issuer") != settings.SLUICE_OIDC_ISSUER:
        raise ProviderUnavailable(f"{url} names another issuer")
    return document


def endpoint(name: str) -> str | None:
    """An endpoint's URL: as set in SLUICE_OIDC_<name>_ENDPOINT, else discovered."""
    given: str = settings.SLUICE_OIDC_ENDPOINTS[name]
    if given:
        return given
    if name == "END_SESSION" and all(settings.SLUICE_OIDC_ENDPOINTS[n] for n in REQUIRED):
        return None  # every endpoint given: no discovery, and no provider logout
    found = provider_metadata().get(DISCOVERY_KEYS[name])
    if not found and name in REQUIRED:
        raise ProviderUnavailable(f"the provider's discovery document has no {name} endpoint")
    return found or None


def has_role(user: User) -> bool:
    """Whether the user holds any role: one that holds none has nothing to see."""
    roles_forget(user)  # read again: the sign-in has just replaced them
    roles = roles_of(user)
    return roles.org is not None or bool(roles.teams)


class LocalPasswordBackend(ModelBackend):
    """Django's password sign-in, for everyone while SLUICE_LOCAL_LOGIN is on and for the
    break-glass superusers only when it is off."""

    def user_can_authenticate(self, user: User | AnonymousUser | None) -> bool:
        allowed = settings.SLUICE_LOCAL_LOGIN or bool(getattr(user, "is_superuser", False))
        return allowed and super().user_can_authenticate(user)


class OidcBackend(OIDCAuthenticationBackend):
    """Signs in the user the provider vouches for, creating them the first time, and
    replaces their roles with those their roles claim maps to."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds a backend for every request of a signed-in user; the library's
        # own __init__ would read the endpoints (discovery) each time. They are read at
        # sign-in (authenticate) instead.
        self.UserModel = User

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:
        if request is None or "nonce" not in kwargs:
            return None  # a password sign-in: not for this backend
        self.OIDC_OP_TOKEN_ENDPOINT = endpoint("TOKEN")
        self.OIDC_OP_USER_ENDPOINT = endpoint("USERINFO")
        self.OIDC_OP_JWKS_ENDPOINT = endpoint("JWKS")
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        return super().authenticate(request, **kwargs)

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        # The library checks the signature and the nonce; the issuer and the audience are
        # checked here (OpenID Connect Core 3.1.3.7), so a token minted for another client
        # or by another issuer is refused.
        payload: dict[str, Any] = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if payload.get("iss") != settings.SLUICE_OIDC_ISSUER:
            raise SuspiciousOperation("ID token from another issuer")
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token for another client")
        return payload

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        claims = super().get_userinfo(access_token, id_token, payload)
        # Core 5.3.2: the userinfo response's sub must be the ID token's.
        if not isinstance(claims, dict) or claims.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("userinfo is about someone else")
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        return User.objects.filter(
            oidc_identity__issuer=settings.SLUICE_OIDC_ISSUER,
            oidc_identity__subject=claims["sub"],
        )

    @transaction.atomic
    def create_user(self, claims: dict[str, Any]) -> User:
        user = User.objects.create_user(_free_username(claims), email=claims.get("email") or "")
        OidcIdentity.objects.create(
            user=user, issuer=settings.SLUICE_OIDC_ISSUER, subject=claims["sub"]
        )
        log.info("single sign-on: created user %s for subject %s", user, claims["sub"])
        return self._roles_apply(user, claims)

    @transaction.atomic
    def update_user(self, user: User, claims: dict[str, Any]) -> User:
        email = claims.get("email") or ""
        if email and email != user.email:
            user.email = email
            user.save(update_fields=["email"])
        return self._roles_apply(user, claims)

    def _roles_apply(self, user: User, claims: dict[str, Any]) -> User:
        values = claim_values(claims, settings.SLUICE_OIDC_ROLES_CLAIM)
        org_role, team_roles = roles_from_claim(values, settings.SLUICE_OIDC_ROLE_MAP)
        roles_set(user=user, org_role=org_role, team_roles=team_roles, actor=None, source=SOURCE)
        user.oidc_claim_values = values  # type: ignore[attr-defined]  # for the no-role page
        return user


def _free_username(claims: dict[str, Any]) -> str:
    """A username for a new user: the provider's preferred_username, else the email, else
    the subject; suffixed when a user of that name exists already."""
    base = str(claims.get("preferred_username") or claims.get("email") or claims["sub"])[:140]
    name, number = base, 1
    while User.objects.filter(username=name).exists():
        number += 1
        name = f"{base}-{number}"
    return name


def _failed(request: HttpRequest, message: str, status: int) -> HttpResponse:
    context = {"message": message, "sso_name": settings.SLUICE_OIDC_PROVIDER_NAME}
    return render(request, "registration/sso_failed.html", context, status=status)


class OidcAuthenticateView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider (with a PKCE challenge, a state and a nonce)."""

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # the library's would read the endpoint here
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            self.OIDC_OP_AUTH_ENDPOINT = endpoint("AUTHORIZATION")
        except ProviderUnavailable as exc:
            log.warning("single sign-on: %s", exc)
            return _failed(request, MSG_PROVIDER_FAILED, status=502)
        response: HttpResponse = super().get(request)
        return response


class OidcCallbackView(OIDCAuthenticationCallbackView):
    """Where the provider sends the browser back: sign the user in, or say why not."""

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            response: HttpResponse = super().get(request)
        except (ProviderUnavailable, requests.RequestException) as exc:
            log.warning("single sign-on: the provider failed: %s", exc)
            return _failed(request, MSG_PROVIDER_FAILED, status=502)
        except SuspiciousOperation as exc:
            log.warning("single sign-on: refused: %s", exc)
            return _failed(request, MSG_SIGN_IN_FAILED, status=400)
        return response

    def login_failure(self) -> HttpResponse:
        return _failed(self.request, MSG_SIGN_IN_FAILED, status=403)

    def login_success(self) -> HttpResponse:
        if has_role(self.user):
            response: HttpResponse = super().login_success()
            return response
        # Signed in at the provider, but no group of theirs maps to a role: say so, and
        # keep no session (an earlier one of theirs ends too).
        if self.request.user.is_authenticated:
            auth.logout(self.request)
        context = {
            "signed_in_as": self.user.email or self.user.get_username(),
            "claim": settings.SLUICE_OIDC_ROLES_CLAIM,
            "values": getattr(self.user, "oidc_claim_values", []),
            "sso_name": settings.SLUICE_OIDC_PROVIDER_NAME,
        }
        return render(self.request, "registration/no_role.html", context, status=403)


def provider_logout_url(request: HttpRequest) -> str:
    """Where the browser goes on logout (OIDC_OP_LOGOUT_URL_METHOD): the provider's
    end_session endpoint when it has one and the user signed in through it, so the
    provider's session ends too (RP-initiated logout); else the login page."""
    login = reverse("login")
    id_token = request.session.get("oidc_id_token")
    if not id_token:
        return login
    try:
        end_session = endpoint("END_SESSION")
    except ProviderUnavailable as exc:
        log.warning("single sign-on: logging out locally only: %s", exc)
        return login
    if not end_session:
        return login
    params = {
        "id_token_hint": id_token,
        "post_logout_redirect_uri": request.build_absolute_uri(login),
        "client_id": settings.OIDC_RP_CLIENT_ID,
    }
    return f"{end_session}{'&' if '?' in end_session else '?'}{urlencode(params)}"


login_context = {
    "sso_name": settings.SLUICE_OIDC_PROVIDER_NAME,
    "local_login": settings.SLUICE_LOCAL_LOGIN,
}
# Open to anyone on purpose (dashboard/access.py): they are how one signs in and out.
urlpatterns = [
    path(
        "login/",
        public(LoginView.as_view(redirect_authenticated_user=True, extra_context=login_context)),
        name="login",
    ),
    path("logout/", public(OIDCLogoutView.as_view()), name="logout"),
    path(
        "oidc/authenticate/",
        public(OidcAuthenticateView.as_view()),
        name="oidc_authentication_init",
    ),
    path("oidc/callback/", public(OidcCallbackView.as_view()), name="oidc_authentication_callback"),
]
