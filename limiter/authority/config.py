"""The limits the limiter applies: its own copy, loaded from the database.

The limiter owns the configuration. Web processes send ids (the key, its upstream
account, the endpoint) and the configuration version their key cache saw, never
limits: a web process with a stale cache cannot flip a limit back. The limiter
reloads on the configuration broadcast (events.CONFIG_CHANGED), and before deciding
on a ticket whose version is newer than its own (a change it has not heard of yet).

**A missing row means no limit at that level.** A key whose profile has no row for
an endpoint is held only by its upstream account's ceiling there; an account whose
profile has no row is held only by its keys' limits; with neither, the call is not
limited (the dashboard's profiles are created with a row for every endpoint). Such a
level is the `UNLIMITED` scope below, with the default queue settings of a row.

**Classes.** A key's calls on an account belong to its team's class (`team:<id>`), or to
its own (`key:<id>`) when a share names the key; a class's guaranteed share on a model is
its share row for that model, else its row for the endpoint kind, else none. The weight
is the team's; the priority the key's, else its team's (limiter/authority/sharing.py).

**Per-model overrides.** A profile's row may name a model (exactly, or a glob such as
`black-forest-labs/FLUX*`, matched without regard to case). For a call to a model, the
profile's limit is the exact row's, else the longest matching glob's, else the
endpoint's row (`ModelRows.match`). On the account's profile that is the model's cap
and starting point; on a key's profile, the key's own budget for that model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from django.db import close_old_connections

from limiter.authority.engine import Limit
from limiter.authority.sharing import DEFAULT_CLASS, PRIORITIES, STANDARD, Klass
from limiter.models import (
    ApiKey,
    ConfigVersion,
    DedicatedModel,
    EndpointLimit,
    Share,
    UpstreamAccount,
    is_glob,
)

# A rate no caller reaches, and EndpointLimit's default queue (100 deep, 30 s).
UNLIMITED = Limit(per_minute=1e12, burst=10**12, queue_depth=100, max_wait=30.0)


def limit_of(row: EndpointLimit) -> Limit:
    return Limit(
        per_minute=float(row.effective_per_minute),
        burst=row.burst,
        tokens_per_minute=float(row.tokens_per_minute) if row.tokens_per_minute else None,
        max_concurrent=row.max_concurrent,
        queue_depth=row.queue_depth,
        max_wait=row.max_queue_wait_seconds,
        shadow=row.shadow,
    )


@dataclass(frozen=True, slots=True)
class ModelRows:
    """One profile's per-model rows for one endpoint kind, in the order they are tried:
    exact names (lowercased) first, then globs longest first."""

    exact: dict[str, Limit] = field(default_factory=dict)
    globs: list[tuple[str, Limit]] = field(default_factory=list)  # (lowercased glob, limit)

    def match(self, model: str) -> tuple[str, Limit] | None:
        """The row that names `model`: (its name or glob, its limit); None for none."""
        name = model.lower()
        if name in self.exact:
            return name, self.exact[name]
        for glob, limit in self.globs:
            if fnmatchcase(name, glob):
                return glob, limit
        return None


def model_rows(rows: list[tuple[str, Limit]]) -> ModelRows:
    exact = {name.lower(): limit for name, limit in rows if not is_glob(name)}
    globs = sorted(
        ((name.lower(), limit) for name, limit in rows if is_glob(name)),
        key=lambda item: (-len(item[0]), item[0]),  # longest first; ties by name, stably
    )
    return ModelRows(exact=exact, globs=globs)


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    version: int = 0
    key_profiles: dict[str, int] = field(default_factory=dict)  # ApiKey pk -> its profile's pk
    account_profiles: dict[str, int] = field(default_factory=dict)  # UpstreamAccount pk -> pk
    limits: dict[tuple[int, str], Limit] = field(default_factory=dict)  # (profile, endpoint)
    models: dict[tuple[int, str], ModelRows] = field(default_factory=dict)  # per-model rows
    # (account pk, lowercased model) served on one of the account's dedicated endpoints.
    dedicated: frozenset[tuple[str, str]] = frozenset()

    def is_dedicated(self, account_id: str, model: str) -> bool:
        return bool(model) and (account_id, model.lower()) in self.dedicated

    # ApiKey pk -> (its team's class id, the team's weight, the key's priority rank)
    key_classes: dict[str, tuple[str, float, int]] = field(default_factory=dict)
    # (UpstreamAccount pk, endpoint) -> {(class id, model or ""): fraction}
    shares: dict[tuple[str, str], dict[tuple[str, str], float]] = field(default_factory=dict)

    def klass(self, key_id: str, account_id: str, endpoint: str, model: str) -> Klass:
        """A key's class on an account's model: its share, its team's weight, its priority."""
        found = self.key_classes.get(key_id)
        if found is None:
            return DEFAULT_CLASS
        team_class, weight, priority = found
        rows = self.shares.get((account_id, endpoint), {})
        model = model.lower()
        for cls in (f"key:{key_id}", team_class):
            share = rows.get((cls, model)) if model else None
            if share is None:
                share = rows.get((cls, ""))
            if share is not None:
                return Klass(cls, share, weight, priority)
        return Klass(team_class, 0.0, weight, priority)

    def knows(self, key_id: str, account_id: str) -> bool:
        return key_id in self.key_profiles and account_id in self.account_profiles

    def key_limit(self, key_id: str, endpoint: str) -> Limit:
        return self._limit(self.key_profiles.get(key_id), endpoint)

    def key_model_limit(self, key_id: str, endpoint: str, model: str) -> Limit | None:
        """The key's own budget for `model` when its profile names the model; else None
        (the endpoint's row applies)."""
        profile_id = self.key_profiles.get(key_id)
        rows = self.models.get((profile_id, endpoint)) if profile_id is not None else None
        found = rows.match(model) if rows and model else None
        return found[1] if found else None

    def account_limit(self, account_id: str, endpoint: str, model: str = "") -> Limit:
        """The account's ceiling for `model`: its override's row, else the endpoint's."""
        profile_id = self.account_profiles.get(account_id)
        if profile_id is not None and model:
            rows = self.models.get((profile_id, endpoint))
            found = rows.match(model) if rows else None
            if found:
                return found[1]
        return self._limit(profile_id, endpoint)

    def _limit(self, profile_id: int | None, endpoint: str) -> Limit:
        if profile_id is None:
            return UNLIMITED
        return self.limits.get((profile_id, endpoint), UNLIMITED)


def config_load() -> LimiterConfig:
    """Every usable key's profile (its own, else its team's), every account's, and every
    profile's limits: a few queries, run off the limiter's event loop."""
    close_old_connections()  # a long-lived process outlives database connections
    version = ConfigVersion.current()  # read first: a change during the load reloads again
    rows = ApiKey.objects.usable().values_list(
        "pk",
        "profile_id",
        "team__profile_id",
        "team_id",
        "team__weight",
        "priority",
        "team__priority",
    )
    limits: dict[tuple[int, str], Limit] = {}
    overrides: dict[tuple[int, str], list[tuple[str, Limit]]] = {}
    for row in EndpointLimit.objects.all():
        if row.model:
            overrides.setdefault((row.profile_id, row.endpoint), []).append(
                (row.model, limit_of(row))
            )
        else:
            limits[(row.profile_id, row.endpoint)] = limit_of(row)
    keys = list(rows)
    return LimiterConfig(
        version=version,
        key_profiles={str(pk): own or team for pk, own, team, *_ in keys},
        key_classes={
            str(pk): (f"team:{team_id}", weight, PRIORITIES.get(prio or team_prio, STANDARD))
            for pk, _own, _team, team_id, weight, prio, team_prio in keys
        },
        shares=shares_load(),
        account_profiles={
            str(pk): profile
            for pk, profile in UpstreamAccount.objects.values_list("pk", "profile_id")
        },
        limits=limits,
        models={where: model_rows(rows) for where, rows in overrides.items()},
        dedicated=frozenset(
            (str(account), model.lower())
            for account, model in DedicatedModel.objects.values_list("account_id", "model")
        ),
    )


def shares_load() -> dict[tuple[str, str], dict[tuple[str, str], float]]:
    """Every guaranteed share, by account and endpoint kind."""
    shares: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    for row in Share.objects.all():
        where = (str(row.account_id), row.endpoint)
        shares.setdefault(where, {})[(row.holder, row.model.lower())] = row.fraction
    return shares
