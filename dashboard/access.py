"""Where the policy (dashboard/policy.py) is enforced: one declared rule per route.

- Dashboard views carry `@rule(ACTION)`, or `@rule(ACTION, team_from=...)` for a page
  or form on one team's object: a team the user may not see answers 404 (not 403, which
  would confirm it exists), then the action on that team is asked of the policy.
- Ops API operations carry `@api_rule(...)`, read by one guard the NinjaAPI applies to
  every operation (`api_guard`), before the payload is parsed.
- Deny by default: `RuleRequired` (middleware) refuses a Django view without a rule,
  `api_guard` an operation without one; `@public` marks the few open on purpose
  (login, logout). tests/dashboard/test_route_table.py walks every route.

A refused write (any method but GET/HEAD/OPTIONS) is audited with who and from where.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from django.contrib.auth.models import AnonymousUser, User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase

from dashboard import policy
from dashboard.audit import refused_record
from dashboard.services import TOKEN_ACTOR
from limiter.models import ApiKey, Team

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponseBase)
F = TypeVar("F", bound=Callable[..., Any])

RULE_ATTR = "sluice_rule"
PUBLIC_ATTR = "sluice_public"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

TeamFrom = Callable[[Mapping[str, Any]], "Team | None"]


class Refused(Exception):
    """The policy refused this user this action (403)."""


class SignedInRequest(HttpRequest):
    """A request a rule let through: its user is a signed-in User."""

    user: User


@dataclass(frozen=True)
class Rule:
    action: str
    # From the route's keyword arguments to the team the object belongs to (None: no
    # such object). Set for routes on one team's object.
    team_from: TeamFrom | None = None
    # A page that reads on GET and changes on POST (a list with its create form): the
    # action its writes need.
    write: str | None = None

    def action_for(self, method: str | None) -> str:
        if self.write is not None and method not in SAFE_METHODS:
            return self.write
        return self.action


# --- finding the team a route's object belongs to --------------------------------------
def _row(queryset: Any, value: Any) -> Any:
    """The row with this id, or None (also for an id that is not a number)."""
    try:
        pk = int(value)
    except (TypeError, ValueError):
        return None
    return queryset.filter(pk=pk).first()


def team_pk(name: str = "pk") -> TeamFrom:
    """The route's `name` argument is a team's id."""
    return lambda kwargs: _row(Team.objects, kwargs.get(name))


def key_team(name: str = "pk") -> TeamFrom:
    """The route's `name` argument is a key's id: its team."""
    return owner_team(ApiKey, name)


def owner_team(model: Any, name: str = "pk") -> TeamFrom:
    """The route's `name` argument is the id of a `model` row with a `team`."""

    def find(kwargs: Mapping[str, Any]) -> Team | None:
        # Only the team's id is read from the row: a row holding a value that cannot be
        # read back (an amount stored before it was checked) must still be removable.
        owner = _row(model.objects.values("team_id"), kwargs.get(name))
        return _row(Team.objects, owner["team_id"]) if owner is not None else None

    return find


# --- the decision --------------------------------------------------------------------------
def decide(
    user: User | AnonymousUser | Any, spec: Rule, method: str | None, kwargs: Mapping[str, Any]
) -> None:
    """Raise Http404 for an object of a team the user may not see, Refused when the
    policy does not allow the action; return when it does."""
    action = spec.action_for(method)
    if spec.team_from is not None:
        team = spec.team_from(kwargs)
        if team is None or not policy.team_visible(user, team):
            raise Http404
        if not policy.allows(user, action, team):
            raise Refused
        return
    if action in policy.TEAM_ACTIONS:
        # A list the route itself narrows to teams_visible: open to whoever holds the
        # action on some team.
        if not policy.allows_somewhere(user, action):
            raise Refused
        return
    if not policy.allows(user, action):
        raise Refused


def team_rows_of(request: HttpRequest) -> frozenset[int] | None:
    """Whose rows a shared view returns to this request's caller (`policy.team_rows`):
    every row for the bootstrap admin token and an organisation role."""
    caller = getattr(request, "auth", None) or request.user
    if caller == TOKEN_ACTOR:
        return None
    return policy.team_rows(caller)


def rule_of(func: Any) -> Rule | None:
    return getattr(func, RULE_ATTR, None)


def public(view: F) -> F:
    """A view open to anyone on purpose (the sign-in page); everything else needs a rule."""
    setattr(view, PUBLIC_ATTR, True)
    return view


# --- dashboard views -------------------------------------------------------------------------
def rule(
    action: str, *, team_from: TeamFrom | None = None, write: str | None = None
) -> Callable[
    [Callable[Concatenate[SignedInRequest, P], R]],
    Callable[Concatenate[HttpRequest, P], R | HttpResponse],
]:
    """The view's rule: anonymous visitors go to the sign-in page; a refusal is a 403
    (audited when it was a write), another team's object a 404. With `write`, the
    page's POSTs need that action instead."""
    spec = Rule(action, team_from, write)

    def decorate(
        view: Callable[Concatenate[SignedInRequest, P], R],
    ) -> Callable[Concatenate[HttpRequest, P], R | HttpResponse]:
        # A view may call another with positional arguments (key_create renders `team`).
        names = list(inspect.signature(view).parameters)[1:]

        @wraps(view)
        def guarded(request: HttpRequest, *args: P.args, **kwargs: P.kwargs) -> R | HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            try:
                decide(
                    request.user,
                    spec,
                    request.method,
                    {**dict(zip(names, args, strict=False)), **kwargs},
                )
            except Refused:
                if request.method not in SAFE_METHODS:
                    refused_record(
                        request=request, user=request.user, rule=spec.action_for(request.method)
                    )
                raise PermissionDenied from None
            # Checked just above; the types cannot follow a check on request.user to request.
            return view(cast(SignedInRequest, request), *args, **kwargs)

        setattr(guarded, RULE_ATTR, spec)
        return guarded

    return decorate


class RuleRequired:
    """Deny by default: a Django view with neither a rule nor `@public` answers 403.
    The admin (its own site, asking the policy) and the ops API (`api_guard`) are
    enforced where they are built."""

    EXEMPT_NAMESPACES = frozenset({"admin", "ops-api"})

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> None:
        if rule_of(view) is not None or getattr(view, PUBLIC_ATTR, False):
            return None
        match = request.resolver_match
        if match is not None and self.EXEMPT_NAMESPACES & set(match.namespaces):
            return None
        raise PermissionDenied


# --- ops API operations ----------------------------------------------------------------------
def api_rule(action: str, *, team_from: TeamFrom | None = None) -> Callable[[F], F]:
    """The operation's rule (put it below `@router.get(...)`); `api_guard` applies it."""
    spec = Rule(action, team_from)

    def decorate(func: F) -> F:
        setattr(func, RULE_ATTR, spec)
        return func

    return decorate


def api_guard(run: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """A NinjaAPI view decorator (`api.add_decorator(api_guard, mode="view")`): it wraps
    every operation's `run`, so it sees the caller before the payload is parsed.
    Authentication first (401), then the operation's rule; none declared is refused."""
    operation = run.__self__  # type: ignore[attr-defined]  # a bound Operation.run

    @wraps(run)
    def guarded(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        error = operation._run_checks(request)  # authentication; run repeats it, cheaply
        if error:
            return cast(HttpResponseBase, error)
        spec = rule_of(operation.view_func)
        auth = getattr(request, "auth", None)
        try:
            if spec is None:
                raise Refused
            # SLUICE_ADMIN_TOKEN, the bootstrap admin credential, may do everything.
            if auth != TOKEN_ACTOR:
                decide(auth, spec, request.method, kwargs)
        except Refused as exc:
            if request.method not in SAFE_METHODS:
                refused_record(
                    request=request,
                    user=auth if isinstance(auth, User) else None,
                    rule=spec.action_for(request.method) if spec else "none",
                )
            return cast(HttpResponseBase, operation.api.on_exception(request, exc))
        except Http404 as exc:
            return cast(HttpResponseBase, operation.api.on_exception(request, exc))
        return run(request, **kwargs)

    return guarded
