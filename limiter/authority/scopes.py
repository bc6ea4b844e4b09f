"""Which scopes a ticket charges, and the limit of every scope the engine holds: from the
limiter's own configuration (limiter/authority/config.py) and, for a model's account
scope, its learned ceiling (limiter/authority/learning.py).

A ticket names a key, its upstream account, the endpoint and the model; every call charges
the key's scope and the account's scope for that model, atomically (the engine). A key's
profile may give it a budget of its own for a model; a merged embeddings request charges
its callers' keys and the account apart (events.CHARGE_KEY, events.CHARGE_ACCOUNT).

The configuration is loaded elsewhere (it is a database read); `stale` says when a ticket
should wait for a load first: it saw a newer version, or names a key or account this
configuration does not know yet (created since). An id still unknown after a load (a key
deleted since its web process cached it) is not worth another load: `not_found` keeps it
limited as "no row" until the configuration changes.

When the limits move (a new configuration, Together's answers, a ramp, a reset), `Scopes`
applies them to the engine's scopes at once.
"""

from __future__ import annotations

from limiter.authority.config import UNLIMITED, LimiterConfig
from limiter.authority.engine import Engine, Limit, ScopeId, Ticket
from limiter.authority.learning import LearnedCeilings
from limiter.authority.sharing import DEFAULT_CLASS, Klass
from limiter.protocol import events

ScopeLimit = tuple[ScopeId, Limit]
TicketMessage = events.AcquireMessage | events.AdoptMessage


class Scopes:
    def __init__(
        self, engine: Engine, ceilings: LearnedCeilings, config: LimiterConfig | None = None
    ) -> None:
        self.engine = engine
        # The limits it applies: its own copy, never a ticket's.
        self.config = config or LimiterConfig()
        self.ceilings = ceilings
        self._unknown: set[tuple[str, str]] = set()

    def loaded(self, config: LimiterConfig) -> None:
        """A new configuration: keys and accounts not found before are asked about again.
        (`refresh` applies it to the engine's scopes.)"""
        self.config = config
        self._unknown.clear()

    def refresh(self, now: float) -> None:
        """Every scope the engine holds takes its limit under the configuration loaded,
        and every queued ticket its class (share, weight, priority)."""
        for scope_id in list(self.engine.scopes):
            self.engine.scope(scope_id, self.limit(scope_id), now)
        self.engine.reclassify(self.klass_of)

    def klass(self, message: TicketMessage) -> Klass:
        """A ticket's class on its account's model (config.LimiterConfig.klass)."""
        if message.get("charge") == events.CHARGE_KEY:
            return DEFAULT_CLASS  # charges its key alone: no account queue to order
        model = message.get("model", "")
        return self.config.klass(message["key"], message["account"], message["endpoint"], model)

    def klass_of(self, ticket: Ticket) -> Klass:
        """A queued ticket's class under the configuration now loaded."""
        _, key, _endpoint, _ = ticket.key.id
        _, account, endpoint, model = ticket.account.id
        if not key or not account:
            return ticket.klass
        return self.config.klass(key, account, endpoint, model)

    def stale(self, message: TicketMessage) -> bool:
        """Whether to load the configuration before resolving this ticket."""
        key, account = message["key"], message["account"]
        if message.get("version", 0) > self.config.version:  # type: ignore[operator]
            return True
        return not self.config.knows(key, account) and (key, account) not in self._unknown

    def not_found(self, message: TicketMessage) -> None:
        """After a load: a key or account the configuration still does not know is not
        loaded for again until the configuration changes."""
        key, account = message["key"], message["account"]
        if not self.config.knows(key, account):
            self._unknown.add((key, account))

    def for_ticket(self, message: TicketMessage) -> tuple[ScopeLimit, ScopeLimit]:
        """The key's and the account's scope for a ticket, with their limits."""
        key, account, endpoint = message["key"], message["account"], message["endpoint"]
        model = message.get("model", "")
        charge = message.get("charge", events.CHARGE_BOTH)
        if charge == events.CHARGE_ACCOUNT:  # the merged request: the account alone
            key_scope: ScopeLimit = (("key", "", endpoint, ""), UNLIMITED)
        else:
            key_scope = self._key_scope(key, endpoint, model)
        if charge == events.CHARGE_KEY:  # a merged call's caller: its key alone
            return key_scope, (("account", "", endpoint, ""), UNLIMITED)
        if self.config.is_dedicated(account, model):
            # Served on the account's dedicated endpoint: Together sets no rate limit there,
            # so no serverless ceiling (learned or not) holds it; the key's limits still do.
            return key_scope, (("account", "", endpoint, ""), UNLIMITED)
        # The account's ceiling per model: one model's 429 or pace leaves the others be.
        account_id: ScopeId = ("account", account, endpoint, model)
        return key_scope, (account_id, self.account_limit(account_id))

    def _key_scope(self, key: str, endpoint: str, model: str) -> ScopeLimit:
        """The key's scope for a call: its profile's row for the model when it names one
        (a budget of its own, charged instead of the endpoint's), else the endpoint's.
        A key's calls to one model always land in the same scope, so the fair queue of
        each model's account scope still sees one queue per key."""
        budget = self.config.key_model_limit(key, endpoint, model)
        if budget is not None:
            return ("key", key, endpoint, model), budget
        return ("key", key, endpoint, ""), self.config.key_limit(key, endpoint)

    def account_limit(self, scope_id: ScopeId) -> Limit:
        """An account's scope for a model: its profile's row, paced at the model's ceiling."""
        _, account, endpoint, model = scope_id
        return self.ceilings.limit(scope_id, self.config.account_limit(account, endpoint, model))

    def limit(self, scope_id: ScopeId) -> Limit:
        """The limit of a scope the engine holds, under the configuration now loaded."""
        kind, object_id, endpoint, model = scope_id
        if kind != "key":
            return self.account_limit(scope_id)
        # A model's own budget that is gone takes the endpoint's row until its scope
        # idles out (new calls go to the endpoint's scope already).
        budget = self.config.key_model_limit(object_id, endpoint, model) if model else None
        return budget or self.config.key_limit(object_id, endpoint)

    def upstream(self, scope_id: ScopeId, report: events.UpstreamReportMessage, now: float) -> None:
        """What Together said of a model's account scope: its pace moves with what it
        learned, and a 429 pauses the scope for as long as Together asked."""
        if self.config.is_dedicated(scope_id[1], scope_id[3]):
            return  # its calls charge no such scope: nothing to learn, nothing to pause
        learned = self.ceilings.learn(scope_id, report, now)
        if learned is not None:
            self.engine.scope(scope_id, learned, now)
        if report["pause"] > 0:
            self.engine.pause((scope_id, self.account_limit(scope_id)), report["pause"], now)

    def reset_ceiling(self, scope_id: ScopeId, now: float) -> None:
        """Forget a model's learned ceiling: its scope is paced at the profile's row again."""
        self.ceilings.reset(scope_id)
        limit = self.account_limit(scope_id)  # a fresh ceiling at the profile's row
        if scope_id in self.engine.scopes:
            self.engine.scope(scope_id, limit, now)

    def ramp(self, now: float) -> bool:
        """Models whose callers wait step up (LearnedCeilings.ramp); whether any did."""
        waiting = {ticket.account.id for ticket in self.engine.tickets.values()}
        stepped = self.ceilings.ramp(now, waiting)
        for scope_id, limit in stepped:
            self.engine.scope(scope_id, limit, now)
        return bool(stepped)
