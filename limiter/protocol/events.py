"""Channel names, group names and message shapes shared by the limiter, the web
processes and the dashboard. One module, so a newcomer sees the whole protocol here.

Requests to the limiter go to the named channel LIMITER_CHANNEL; its answers go to the
asking process's reply channel. The limiter publishes live snapshots to LIVE_GROUP;
configuration changes (limits, keys, teams) are broadcast to CONFIG_GROUP so every web
process drops its cached keys and limits at once, and cuts its calls in flight whose key
was revoked or whose team was paused (limiter/gateway/revocation.py). The broadcast names
nothing: each process asks the database about the keys it is serving. Newly recorded
fine-tuned models are broadcast too (MODELS_CHANGED), so every web process drops its map
of who owns which.
"""

from __future__ import annotations

from typing import Literal, NotRequired

# typing_extensions' TypedDict: pydantic (the ops API's schemas) reads these shapes too,
# and on Python 3.11 it accepts only this one.
from typing_extensions import TypedDict

LIMITER_CHANNEL = "limiter"
LIVE_GROUP = "sluice.live"
CONFIG_GROUP = "sluice.config"

# Message types (Channels maps "limiter.acquire" to the consumer method limiter_acquire).
ACQUIRE = "limiter.acquire"
RELEASE = "limiter.release"
CANCEL = "limiter.cancel"
UPSTREAM_REPORT = "limiter.upstream"
SNAPSHOT_REQUEST = "limiter.snapshot"
PING = "limiter.ping"
DECISION = "limiter.decision"
PONG = "limiter.pong"
LIVE_SNAPSHOT = "live.snapshot"
CONFIG_CHANGED = "config.changed"
MODELS_CHANGED = "models.changed"  # to CONFIG_GROUP: a team's fine-tuned models were recorded
LIMITER_STARTED = "limiter.started"  # to CONFIG_GROUP: web processes answer with ADOPT
ADOPT = "limiter.adopt"
REACQUIRE = "limiter.reacquire"  # ask again, handing a lease back in the same step
RENEW = "limiter.renew"  # a lease whose request still runs (a long stream)
USAGE = "limiter.usage"  # a budgeted call's actual usage, charged to its budgets
JOB_BUDGET = "limiter.job_budget"  # hold a job's estimate against its budgets, if it fits
JOB_BUDGET_ANSWER = "limiter.job_budget_answer"  # the answer, on the asker's reply channel
CEILING_RESET = "limiter.ceiling_reset"  # staff: forget a model's learned ceiling
CEILING_RESET_DONE = "limiter.ceiling_reset_done"  # the answer, on the asker's reply channel
COALESCED = "limiter.coalesced"  # a merged embeddings request was sent (for the live view)
EXTEND = "limiter.extend"  # a queued merged request may wait longer (a patient caller joined)
LIVE_JOBS = "live.jobs"  # to LIVE_GROUP: the job poller's slots (limiter/jobs/live.py)

# What each group carries. Channels closes a consumer (1011) on a message it has no
# handler for, so every member of a group handles or explicitly ignores each of these;
# tests/dashboard/test_consumers.py checks the source's group_send calls against this.
GROUP_EVENTS: dict[str, tuple[str, ...]] = {
    LIVE_GROUP: (LIVE_SNAPSHOT, LIVE_JOBS),
    CONFIG_GROUP: (CONFIG_CHANGED, MODELS_CHANGED, LIMITER_STARTED),
}

# What a ticket charges (AcquireMessage.charge). A merged embeddings request
# (limiter/gateway/coalesce.py) charges each caller's key as if it had called alone, and
# the account's per-model scope once for the whole upstream request. Both kinds always
# get a lease, so that a grant whose work never went upstream can be handed back whole
# (ReleaseMessage.unused): a caller refused at the account is charged nothing.
CHARGE_BOTH = ""  # the key and the account, atomically: every other call
CHARGE_KEY = "key"  # a caller of a merged request: its key's scope only
CHARGE_ACCOUNT = "account"  # the merged request itself: the account's scope only

# A refusal's reason (DecisionMessage.reason), as the API puts it in `error.code` and the
# 429 record keeps it; the engine decides with these (limiter/authority/engine.py).
RATE_LIMITED = "rate_limited"
ACCOUNT_RATE_LIMITED = "account_rate_limited"
TOKEN_RATE_LIMITED = "token_rate_limited"
QUEUE_FULL = "queue_full"
QUEUE_TIMEOUT = "queue_timeout"
CONCURRENCY_LIMITED = "concurrency_limited"
UPSTREAM_PAUSED = "upstream_paused"
# The account's ceiling held it, and its class had used up its guaranteed share (others
# are served within theirs first), or a call of a higher priority was waiting before it.
SHARE_USED_UP = "share_used_up"
PRIORITY_WAITING = "priority_waiting"
# A ticket whose units no bucket can hold: a bug upstream of the engine, refused alone.
INVALID_UNITS = "invalid_units"


class _Charge(TypedDict, total=False):
    charge: str  # CHARGE_KEY or CHARGE_ACCOUNT; absent: both
    # Seconds it may queue, instead of its key's max wait: a merged request (CHARGE_ACCOUNT)
    # waits as long as its most patient caller allows (raised later with EXTEND).
    max_wait: float


class AcquireMessage(_Charge):
    """A ticket names who asks, never which limits apply: the limiter owns those
    (limiter/authority/config.py), so a web process with a stale cache cannot flip a limit back."""

    type: str  # ACQUIRE
    ticket: str
    reply: str
    endpoint: str
    key: str  # ApiKey pk
    account: str  # UpstreamAccount pk
    # Together limits each model on its own: the account's scope is per model ("": files, jobs).
    model: str
    version: int  # the configuration version the asker's key cache saw (ConfigVersion)
    tokens: float  # the estimate to reserve where a token limit applies, and budgets'
    request_id: str
    # US dollars the call may cost at the price the web process holds (0: none known),
    # reserved against dollar budgets until its usage report (limiter/usage/budgets.py).
    cost: NotRequired[float]
    # False: a call that can cost nothing (a list), paced by its key's rate but never
    # refused by a budget (budget_gate.py). Absent: it spends.
    spends: NotRequired[bool]


class ReacquireMessage(AcquireMessage):
    """An ACQUIRE for a call that holds `lease` (Together answered it 429): the limiter
    frees the lease and queues the ticket at the head of its key's queue in one step,
    so the retry neither waits on its own slot nor loses it to a newcomer."""

    lease: str


class ExtendMessage(TypedDict):
    """A queued ticket may wait longer: up to `max_wait` seconds from its arrival (a
    caller more patient than those before it joined a merged request)."""

    type: str  # EXTEND
    ticket: str
    max_wait: float


class RenewMessage(TypedDict):
    type: str  # RENEW
    lease: str


class ShadowRefusal(TypedDict):
    """What a shadow limit or budget would have refused a granted call with."""

    scope: str  # "key" | "account" (a profile row) | "team" (a team's budget)
    reason: str
    message: str  # a budget's own words; "" for a row's


class DecisionMessage(TypedDict):
    type: str  # DECISION
    ticket: str
    kind: Literal["grant", "queued", "refuse"]
    lease: str
    reason: str
    scope: str  # "key" | "account"
    retry_after: float
    waited: float
    limit: int
    remaining: int
    reset: float
    max_wait: float  # "queued": the longest the ticket may wait for its grant
    # The limiter's monotonic clock at the decision: only differences between decisions
    # mean anything on another host (limiter/protocol/grants.py Lateness).
    at: float
    limiter: str  # the deciding limiter instance: its clock is another one after a restart
    # A grant: a budget counts this key's calls, so report the call's usage (USAGE).
    budgeted: NotRequired[bool]
    # A grant that holds a budget reservation (its ticket id): the USAGE report names it,
    # and a grant never used is reported as 0 under it.
    reservation: NotRequired[str]
    # A refusal the limiter words itself (budget_exceeded names the budget and its reset).
    message: NotRequired[str]
    # A grant: the shadow limits and budgets that would have refused it (recorded, not 429).
    shadow: NotRequired[list[ShadowRefusal]]
    # A refusal that holds for a while: every call of this key to the same endpoint and
    # model is refused for `refused_for` seconds from the ticket's sending, whatever else
    # happens, unless the configuration changes or the limiter restarts (Engine.refused_for);
    # the web process refuses them itself meanwhile (limiter/protocol/refused.py).
    # `refused_scope`: whose state proves it, "key" or "account" (an upstream pause).
    refused_for: NotRequired[float]
    refused_scope: NotRequired[str]
    # A grant that queued, or a queue_timeout: the rule it waited on (a reason code).
    rule: NotRequired[str]


class ReleaseMessage(TypedDict):
    type: str  # RELEASE
    lease: str
    tokens_used: float | None
    # Its work never went upstream (a merged request's caller refused at the account):
    # its request charge comes back too, as far as it has not drained.
    unused: NotRequired[bool]


class UsageMessage(TypedDict):
    """What a budgeted call used, reported when it ends (limiter/usage/budgets.py): it
    settles the call's reservation, if it holds one; a job's usage names none."""

    type: str  # USAGE
    key: str
    model: str
    tokens: float
    cost: float  # US dollars at the price in force in the web process
    reservation: NotRequired[str]  # DecisionMessage.reservation of the call's grant


class JobHoldMessage(TypedDict):
    job: str  # the job's public id: its usage report names it as the reservation
    model: str
    tokens: float
    cost: float  # US dollars


class JobBudgetMessage(TypedDict):
    """Hold a job's estimate (a split batch: its parts') against the key's and team's
    budgets when it is created and again when it starts, only if it fits
    (limiter/usage/budgets.py BudgetBook.hold_jobs); a refusal is worded for `job` (the
    kind, in words) and `action` (what does not happen: "accepted", "started")."""

    type: str  # JOB_BUDGET
    ticket: str
    reply: str
    key: str
    version: int  # the configuration version the asker saw (a newer one is loaded first)
    job: str
    action: str
    holds: list[JobHoldMessage]


class JobBudgetAnswer(TypedDict):
    type: str  # JOB_BUDGET_ANSWER
    ticket: str
    held: bool
    message: NotRequired[str]  # refused: which budget, the estimate, when it resets
    over_limit: NotRequired[bool]  # refused: the estimate is more than the whole limit
    retry_after: NotRequired[float]  # refused: seconds until the budget resets


class AdoptMessage(_Charge):
    """A lease a web process holds, handed to a limiter that started after it was granted."""

    type: str  # ADOPT
    lease: str
    endpoint: str
    key: str
    account: str
    model: str
    tokens: float


class UpstreamReportMessage(TypedDict):
    """What Together said: its rate-limit headers and, on a 429, how long to pause."""

    type: str  # UPSTREAM_REPORT
    account: str
    endpoint: str
    model: str  # what Together said concerns this model only
    error_type: str  # a 429's error type: dynamic_token_limited cuts the token pace
    pause: float  # seconds; 0 when this is only a headers report
    headers: dict[str, str]
    refused: bool  # an upstream 429 that reached the caller (for the live 429 counts)
    unavailable: int  # Together's 503s (capacity) on the way: counted, no pace changes


class CeilingResetMessage(TypedDict):
    """Staff reset a model's learned ceiling: the limiter forgets it (memory and
    database) and paces the model at its profile's row until Together says more."""

    type: str  # CEILING_RESET
    account: str
    endpoint: str
    model: str
    reply: str  # where to confirm (CEILING_RESET_DONE); "" for none


class ModelCeilingSnapshot(TypedDict):
    """One model's ceiling on one account, as learned from Together (authority/ceilings.py)."""

    account: str  # UpstreamAccount pk
    endpoint: str
    model: str
    cap_per_minute: float  # the profile's row: the cap and starting point
    learned_per_minute: float | None  # what Together's headers said; None: nothing yet
    learned_tokens_per_minute: float | None
    pace_per_minute: float  # the pace in use
    token_pace_per_minute: float | None
    source: str  # where the pace came from: "profile" | "headers" | "429"
    updated_at: float | None  # unix time the pace or learned limit last changed
    last_headers: dict[str, str]  # Together's last rate headers for the model, with "at"
    upstream_429_last_minute: int
    upstream_503_last_minute: int


class CoalescedMessage(TypedDict):
    """A web process sent one merged embeddings request: how many inputs it carried and
    how long its callers waited to be merged (the live view shows the last minute)."""

    type: str  # COALESCED
    account: str
    model: str
    inputs: int
    callers: int
    waited: float  # seconds, summed over its callers
    longest_wait: float  # seconds, the longest any of its callers waited


class CoalescingSnapshot(TypedDict):
    """Merged embeddings requests of the last minute on one account and model."""

    account: str
    model: str
    requests: int
    inputs: int
    callers: int
    inputs_per_request: float
    mean_wait_ms: float
    longest_wait_ms: float


class ScopeSnapshot(TypedDict):
    kind: Literal["key", "account"]
    id: str
    endpoint: str
    model: str  # an account's scope is per model; "" for a key's
    limit_per_minute: float
    burst: int
    in_use: float  # units of the burst in use now: the window the limiter enforces
    admitted_last_minute: int
    queued: int
    longest_wait: float  # seconds the oldest queued request has waited
    leases: int
    max_concurrent: int | None
    tokens_per_minute: float | None
    tokens_in_use: float | None
    paused_for: float  # seconds left of an upstream pause
    refused_last_minute: dict[str, int]  # {"gateway": n, "upstream": n}
    # (Not required: a snapshot from a limiter before these fields still reads.)
    shadow: NotRequired[bool]  # a shadow limit: records what it would refuse, refuses none
    shadow_refused_last_minute: NotRequired[int]  # calls admitted that it would have refused
    # Use over the last minute as a fraction of the limit (requests admitted / rate per
    # minute; a shadow scope's: what its enforced twin would have admitted), and whether
    # that is at or above the near-limit threshold (limiter/authority/near.py).
    use_fraction: NotRequired[float]
    near_limit: NotRequired[bool]


class SharingSnapshot(TypedDict):
    """One class's part of an account's model ceiling (issue 21): its guaranteed share,
    what it used lately (both fractions of the ceiling in force, over the engine's share
    window), its calls waiting, and whether it lends its share or borrows beyond it now."""

    account: str  # UpstreamAccount pk
    endpoint: str
    model: str
    holder: str  # "team:<pk>" or "key:<pk>"
    share: float
    priority: int  # 0 background, 1 standard, 2 critical
    weight: float
    use: float
    waiting: int
    state: str  # "lending" | "borrowing" | "reclaiming" | "within" | "idle"


class LiveSnapshot(TypedDict):
    type: str  # LIVE_SNAPSHOT
    at: float  # unix time
    limiter: dict[
        str, float
    ]  # started_at, decisions, tickets_queued, leases, history_bucket_seconds
    scopes: list[ScopeSnapshot]
    upstream_headers: dict[str, dict[str, dict[str, str]]]  # account -> endpoint -> headers
    models: list[ModelCeilingSnapshot]  # Together's limit per account and model, as learned
    # Per endpoint, the last hour in 10-second buckets (authority/stats.py):
    # [[bucket_start_unix_seconds, admitted, queued, refused], ...], empty buckets left out
    history: dict[str, list[list[int]]]
    coalescing: list[CoalescingSnapshot]
    sharing: NotRequired[list[SharingSnapshot]]  # per account and model, each class's part
