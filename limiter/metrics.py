"""Prometheus metrics of this process, served at /metrics.

Each web process exposes its own (scrape each one); the counters are cheap enough for
the request path (a label child is looked up once and cached by prometheus-client).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

ADMITTED = Counter(
    "sluice_admitted_total", "Requests the limiter admitted.", ["endpoint"], registry=REGISTRY
)
QUEUED = Counter(
    "sluice_queued_total",
    "Admitted requests that waited in the queue first.",
    ["endpoint"],
    registry=REGISTRY,
)
REFUSED = Counter(
    "sluice_refused_total",
    "429s answered, by reason and source (gateway or upstream).",
    ["endpoint", "reason", "source"],
    registry=REGISTRY,
)
SHADOW_REFUSED = Counter(
    "sluice_shadow_refused_total",
    "Calls admitted that a shadow limit or budget would have refused, by team, endpoint "
    "and reason.",
    ["team", "endpoint", "reason"],
    registry=REGISTRY,
)
NEAR_LIMIT_SCOPES = Gauge(
    "sluice_near_limit_scopes",
    "Scopes whose use over the last minute is at or above SLUICE_NEAR_LIMIT_FRACTION of "
    "their limit, by kind (key or account) and endpoint (set by the limiter).",
    ["kind", "endpoint"],
    registry=REGISTRY,
)
REFUSED_LOCALLY = Counter(
    "sluice_refused_locally_total",
    "429s this process answered itself, on a refusal the limiter promised to repeat "
    "(limiter/protocol/refused.py); also counted in sluice_refused_total.",
    registry=REGISTRY,
)
REFUSALS_HELD = Counter(
    "sluice_refusals_held_total",
    "Local 429s held before they were sent: a key that kept coming back during its "
    "promise of refusal (SLUICE_REFUSAL_HOLD).",
    registry=REGISTRY,
)
REFUSAL_HELD_SECONDS = Counter(
    "sluice_refusal_held_seconds_total",
    "Seconds local 429s were held in all (sluice_refusals_held_total's calls).",
    registry=REGISTRY,
)
REFUSALS_HOLDING = Gauge(
    "sluice_refusals_holding",
    "Local 429s being held now (bounded: limiter/protocol/refused.py HOLD_PER_PROCESS).",
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "sluice_queue_wait_seconds",
    "Time queued requests waited before admission.",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "sluice_upstream_seconds",
    "Time to Together's answer, retries included.",
    ["endpoint"],
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_RESPONSES = Counter(
    "sluice_upstream_responses_total",
    "Together's final answers by status.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
LIMITER_ROUND_TRIP = Histogram(
    "sluice_limiter_round_trip_seconds",
    "Limiter answer time when not queued.",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2),
)
REFUSAL_ASK_WAITS = Gauge(
    "sluice_refusal_ask_waits",
    "Plain calls of a flooding key that waited on another call's ask of the limiter "
    "since the process started, instead of asking too (limiter/protocol/refused.py).",
    registry=REGISTRY,
)
LOOP_LATE = Gauge(
    "sluice_event_loop_late_seconds",
    "Seconds this process's event loop has run its timers late since it started: time "
    "every call here waited on top of its own work (a saturated loop).",
    registry=REGISTRY,
)
LOOP_TICKS = Gauge(
    "sluice_event_loop_ticks",
    "Ticks of the loop-lateness probe since the process started (one every 20 ms while "
    "calls come and for 5 s after, every 0.5 s after that; one a turn of the loop when "
    "turns take longer).",
    registry=REGISTRY,
)
LIMITER_UP = Gauge(
    "sluice_limiter_up",
    "1 when the limiter answered this process's last request.",
    registry=REGISTRY,
)
LIMITER_UNAVAILABLE = Counter(
    "sluice_limiter_unavailable_total",
    "Requests answered 503: the limiter was silent.",
    registry=REGISTRY,
)
COALESCED_INPUTS = Histogram(
    "sluice_coalesce_inputs_per_request",
    "Inputs carried by each merged embeddings request sent upstream.",
    buckets=(1, 2, 4, 8, 12, 16, 20, 30, 50, 100),
    registry=REGISTRY,
)
COALESCE_WAIT = Histogram(
    "sluice_coalesce_wait_seconds",
    "Time an embeddings caller waited to be merged (from joining to the send).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5),
    registry=REGISTRY,
)
