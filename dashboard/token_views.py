"""Each signed-in user's own personal API tokens: list, create (the secret shown once),
revoke. A token acts with its owner's role on the ops API (or reads only); someone
else's token answers 404."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from dashboard import forms, services
from dashboard.access import SignedInRequest, rule
from dashboard.models import PersonalToken
from dashboard.policy import TOKENS_OWN


@rule(TOKENS_OWN)
def tokens(request: SignedInRequest) -> HttpResponse:
    form = forms.TokenCreateForm(request.POST or None)
    issued = None
    if request.method == "POST" and form.is_valid():
        issued = services.token_create(
            user=request.user,
            name=form.cleaned_data["name"],
            scope=form.cleaned_data["scope"],
            expires_at=form.expires_at(),
            actor=request.user,
        )
        # The secret is in this response only (never stored, not even in the session).
        form = forms.TokenCreateForm()
    return render(
        request,
        "dashboard/tokens.html",
        {
            "tokens": PersonalToken.objects.filter(user=request.user),
            "form": form,
            "issued": issued,
            "now": timezone.now(),
        },
        status=400 if form.errors else 200,
    )


@require_POST
@rule(TOKENS_OWN)
def token_revoke(request: SignedInRequest, pk: int) -> HttpResponse:
    token = PersonalToken.objects.filter(pk=pk, user=request.user).first()
    if token is None:  # another user's token: as if it did not exist
        raise Http404
    services.token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token {token.prefix}… revoked; its next request gets 401.")
    return redirect("dashboard:tokens")
