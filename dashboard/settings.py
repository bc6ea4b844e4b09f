"""Sluice settings, read from the environment (or `.env`) with django-environ.

The defaults run on a fresh machine with nothing configured: SQLite, the in-memory
channel layer with the limiter inside the web process, and the built-in sandbox
upstream when no TOGETHER_API_KEY is set. Settings that switch a feature on but leave
it incomplete fail loudly with ImproperlyConfigured.
"""

import ipaddress
import zoneinfo
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Django core -----------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
# No key given: one-off commands and the tests run on a development key, but `serve` and
# `runworker` refuse to start on it unless DEBUG (limiter/management/production.py).
SLUICE_DEVELOPMENT_SECRET_KEY = not SECRET_KEY
if not SECRET_KEY:
    if not DEBUG and env.bool("SLUICE_REQUIRE_SECRET_KEY", default=False):
        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    # A development key; `make run` writes a random one into .env on first run.
    SECRET_KEY = "sluice-insecure-development-key-change-me"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "dashboard.apps.SluiceAdminConfig",  # django.contrib.admin, let in by the policy
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # limiter before channels: its `runworker` (one authority, survives Redis restarts)
    # takes precedence over Channels' generic one.
    "limiter",
    "limiter.jobs",
    "limiter.alerts",
    "limiter.usage",
    "channels",
    "dashboard",
    # The simulated Together (a development tool): installed for `manage.py sandbox`,
    # served only when SLUICE_SANDBOX is on.
    "sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "dashboard.middleware.OpsApiErrorShape",  # /api/ answers JSON whatever went wrong
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "dashboard.access.RuleRequired",  # deny by default: a view without a declared rule is 403
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.context_processors.sluice",  # the sandbox / limiter banners
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The gateway's 429 recorder and the job poller write from background threads while
    # pages read and write: WAL plus a busy timeout keeps SQLite from answering "database
    # is locked", and IMMEDIATE transactions take the write lock up front, because a
    # transaction that reads first and then writes cannot wait for it (SQLite answers
    # "locked" at once rather than deadlock; seen as ops API 500s under load).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve static files straight from static/ too, so a fresh clone needs no collectstatic.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
# Deployed behind HTTPS (TLS ends at a proxy in front of `serve`): the session and CSRF
# cookies go only over HTTPS, and the proxy's X-Forwarded-Proto says a request came so
# (Django's CSRF check compares the Origin's scheme with the request's). The proxy must
# set that header itself, overwriting any a client sent. Off: `make run` is plain HTTP.
SLUICE_HTTPS = env.bool("SLUICE_HTTPS", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SLUICE_HTTPS
if SLUICE_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

# --- Channels ----------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    from limiter.protocol.layers import redis_hosts  # timeouts and retries (a plain module)

    CHANNEL_LAYERS = {
        "default": {
            # channels_redis, with a one-trip send
            "BACKEND": "limiter.protocol.layers.SluiceRedisChannelLayer",
            "CONFIG": {
                "hosts": redis_hosts(REDIS_URL),
                "capacity": 10_000,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            # channels' in-memory layer, copying messages as over Redis (a faster copy)
            "BACKEND": "limiter.protocol.memory.SluiceInMemoryChannelLayer",
            "CONFIG": {"capacity": 10_000},
        }
    }

# --- Sluice ------------------------------------------------------------------------
TOGETHER_API_KEY = env.str("TOGETHER_API_KEY", default="")
TOGETHER_BASE_URL = env.str("TOGETHER_BASE_URL", default="https://api.together.xyz/v1")
# No Together key: talk to the built-in sandbox upstream, mounted at /sandbox/ on the
# same server (`manage.py serve` points TOGETHER_BASE_URL at it).
SLUICE_SANDBOX = env.bool("SLUICE_SANDBOX", default=not TOGETHER_API_KEY)
# The hosts an upstream account's base URL may name (its key is sent there), besides
# TOGETHER_BASE_URL's own; https only, but for loopback (limiter/models.py upstream_url_error).
SLUICE_UPSTREAM_ALLOWED_HOSTS = env.list(
    "SLUICE_UPSTREAM_ALLOWED_HOSTS", default=["api.together.xyz"]
)

# Run the limiter inside the web process (the embedded default). With REDIS_URL set,
# the limiter is its own process: `manage.py runworker limiter`.
SLUICE_EMBEDDED_LIMITER = env.bool("SLUICE_EMBEDDED_LIMITER", default=not REDIS_URL)
# How long a web process waits for the limiter's first answer before a 503.
SLUICE_LIMITER_TIMEOUT = env.float("SLUICE_LIMITER_TIMEOUT", default=2.0)
# A grant that reaches the web process later than this (seconds) is handed back and
# asked for again: sent late, it would reach Together bunched with later ones.
SLUICE_GRANT_MAX_AGE = env.float("SLUICE_GRANT_MAX_AGE", default=0.2)
# A refusal the limiter promises to repeat (a key with no room until a moment it names:
# limiter/protocol/refused.py) is answered by each web process itself until then. Off:
# every call asks the limiter (the benchmark's baseline; a fallback, never needed).
SLUICE_LOCAL_REFUSALS = env.bool("SLUICE_LOCAL_REFUSALS", default=True)
# A key that keeps coming back during such a promise (instead of honouring Retry-After) has
# its 429s answered after a hold of at most this many seconds, never past the promise: a
# closed-loop flood then waits instead of spending the event loop other teams share
# (limiter/protocol/refused.py). 0: every local refusal is answered at once.
SLUICE_REFUSAL_HOLD = env.float("SLUICE_REFUSAL_HOLD", default=1.0)
if SLUICE_REFUSAL_HOLD < 0:
    raise ImproperlyConfigured("SLUICE_REFUSAL_HOLD must be zero or more")
# What the gateway does when the limiter does not answer: "closed" refuses with 503
# (the default: limits are a promise), "open" lets the request through, loudly.
SLUICE_LIMITER_FAILURE_MODE = env.str("SLUICE_LIMITER_FAILURE_MODE", default="closed")
if SLUICE_LIMITER_FAILURE_MODE not in {"open", "closed"}:
    raise ImproperlyConfigured("SLUICE_LIMITER_FAILURE_MODE must be 'open' or 'closed'")
# On SIGTERM, `serve` stops accepting and waits this long for requests in flight.
SLUICE_SHUTDOWN_GRACE = env.float("SLUICE_SHUTDOWN_GRACE", default=35.0)
# A concurrency lease not released within this many seconds is reaped by the limiter.
SLUICE_LEASE_TTL = env.float("SLUICE_LEASE_TTL", default=600.0)
# Together's x-ratelimit-* / x-tokenlimit-* limits are per second (its docs); seconds per
# unit if that changes. The pace a model gets stays this fraction below what they report.
SLUICE_UPSTREAM_LIMIT_UNIT_SECONDS = env.float("SLUICE_UPSTREAM_LIMIT_UNIT_SECONDS", default=1.0)
SLUICE_UPSTREAM_MARGIN = env.float("SLUICE_UPSTREAM_MARGIN", default=0.1)
# A restarted limiter starts each model from the ceiling learned before
# (limiter/authority/learned.py) when it is at most this many seconds old; older, from the profile.
SLUICE_LEARNED_CEILING_MAX_AGE = env.float("SLUICE_LEARNED_CEILING_MAX_AGE", default=3600.0)
# Off: Together's headers and 429s never move a model's pace, which stays the profile's (a
# static ceiling; the ramp benchmark's baseline). 429s still pause.
SLUICE_UPSTREAM_LEARN = env.bool("SLUICE_UPSTREAM_LEARN", default=True)
# How often the limiter asks Together which models the account serves on dedicated
# endpoints (limiter/authority/dedicated.py); 0: never (ops mark them by hand).
SLUICE_DEDICATED_POLL_SECONDS = env.float("SLUICE_DEDICATED_POLL_SECONDS", default=60.0)
# A restarted limiter grants nothing on a scope with a concurrency cap for this long, so
# the leases web processes hand back (LIMITER_STARTED -> ADOPT) are counted first.
SLUICE_ADOPT_WINDOW = env.float("SLUICE_ADOPT_WINDOW", default=2.0)
# Concurrent embeddings calls are merged into one upstream request (a profile can turn
# it off): a merged request is sent once it holds its profile's inputs, or this many
# milliseconds after its first caller joined (limiter/gateway/coalesce.py).
SLUICE_COALESCE_WINDOW_MS = env.float("SLUICE_COALESCE_WINDOW_MS", default=5.0)
if SLUICE_COALESCE_WINDOW_MS < 0:
    raise ImproperlyConfigured("SLUICE_COALESCE_WINDOW_MS must be zero or more")
# Largest request body accepted on /v1/ (bytes); file uploads have their own limit.
SLUICE_MAX_BODY_BYTES = env.int("SLUICE_MAX_BODY_BYTES", default=4 * 1024 * 1024)
SLUICE_MAX_UPLOAD_BYTES = env.int("SLUICE_MAX_UPLOAD_BYTES", default=100 * 1024 * 1024)
# Audio to transcribe or translate (a multipart upload): Together takes 80 MB (its SDK).
SLUICE_MAX_AUDIO_UPLOAD_BYTES = env.int("SLUICE_MAX_AUDIO_UPLOAD_BYTES", default=80 * 1000 * 1000)
# Upstream timeouts (seconds) and the total time one call may spend on retries.
SLUICE_UPSTREAM_CONNECT_TIMEOUT = env.float("SLUICE_UPSTREAM_CONNECT_TIMEOUT", default=5.0)
SLUICE_UPSTREAM_READ_TIMEOUT = env.float("SLUICE_UPSTREAM_READ_TIMEOUT", default=120.0)
SLUICE_UPSTREAM_DEADLINE = env.float("SLUICE_UPSTREAM_DEADLINE", default=60.0)
SLUICE_UPSTREAM_MAX_RETRIES = env.int("SLUICE_UPSTREAM_MAX_RETRIES", default=3)
# "aiohttp" (httpx over the aiohttp transport, measured cheaper) or "httpx" (default transport).
SLUICE_UPSTREAM_TRANSPORT = env.str("SLUICE_UPSTREAM_TRANSPORT", default="aiohttp")
# The fine-tune/batch poller runs inside `manage.py serve` in the embedded mode; in
# scale-out mode run `manage.py jobpoller` as its own process.
SLUICE_EMBEDDED_JOB_POLLER = env.bool("SLUICE_EMBEDDED_JOB_POLLER", default=SLUICE_EMBEDDED_LIMITER)
# A job claimed for starting but not confirmed within this many seconds is reconciled.
SLUICE_JOB_START_DEADLINE = env.float("SLUICE_JOB_START_DEADLINE", default=30.0)
# A running job whose status polls keep failing gives its slot back after this many
# seconds (three 404s in a row end it sooner): see limiter/jobs/services.py.
SLUICE_JOB_LOST_AFTER = env.float("SLUICE_JOB_LOST_AFTER", default=24 * 3600.0)
# A bearer token for the ops API (scripts, CI); empty: staff sessions only.
SLUICE_ADMIN_TOKEN = env.str("SLUICE_ADMIN_TOKEN", default="")
# Days of 429 history kept by `manage.py prune429`.
SLUICE_REFUSAL_RETENTION_DAYS = env.int("SLUICE_REFUSAL_RETENTION_DAYS", default=90)
# Alerts (limiter/alerts/): how often each web process adds its counts to the shared
# per-minute rows and judges the rates; one alert per condition per period (seconds).
SLUICE_ALERT_CHECK_INTERVAL = env.float("SLUICE_ALERT_CHECK_INTERVAL", default=5.0)
SLUICE_ALERT_PERIOD = env.int("SLUICE_ALERT_PERIOD", default=3600)
# Rates that raise an alert, per calendar minute summed over all web processes: a team's
# 429s from Sluice, and Together's 429s / 503s on an upstream account.
SLUICE_ALERT_TEAM_429_PER_MINUTE = env.int("SLUICE_ALERT_TEAM_429_PER_MINUTE", default=60)
SLUICE_ALERT_UPSTREAM_429_PER_MINUTE = env.int("SLUICE_ALERT_UPSTREAM_429_PER_MINUTE", default=10)
SLUICE_ALERT_UPSTREAM_503_PER_MINUTE = env.int("SLUICE_ALERT_UPSTREAM_503_PER_MINUTE", default=10)
# Near-limit signals (limiter/authority/near.py): a scope whose use over the last minute is
# at or above this fraction of its limit is marked on the Live view and counted in /metrics;
# a team's key that stays there this many minutes raises `team_near_limit` (0: never).
SLUICE_NEAR_LIMIT_FRACTION = env.float("SLUICE_NEAR_LIMIT_FRACTION", default=0.8)
SLUICE_ALERT_NEAR_LIMIT_MINUTES = env.float("SLUICE_ALERT_NEAR_LIMIT_MINUTES", default=5.0)
# Webhook delivery: the wait after the first failed attempt (doubling after each, at most
# 10 min), attempts before giving up, and each attempt's timeout (seconds).
SLUICE_ALERT_RETRY_BACKOFF = env.float("SLUICE_ALERT_RETRY_BACKOFF", default=5.0)
SLUICE_ALERT_MAX_ATTEMPTS = env.int("SLUICE_ALERT_MAX_ATTEMPTS", default=8)
SLUICE_ALERT_TIMEOUT = env.float("SLUICE_ALERT_TIMEOUT", default=10.0)
# Webhooks may go to loopback, private, link-local (cloud metadata) and other non-public
# addresses: off, they are refused when saved and when sent (limiter/alerts/destinations.py).
# On only for an internal relay, or tests.
SLUICE_WEBHOOK_ALLOW_PRIVATE = env.bool("SLUICE_WEBHOOK_ALLOW_PRIVATE", default=False)
# Usage accounting (limiter/usage/): record every answered call's tokens and cost in
# per-minute rollups, written in batches off the request path every
# SLUICE_USAGE_FLUSH_SECONDS (a crash loses at most that much). Off: no records, and
# budgets are charged from nothing (they refuse nothing).
SLUICE_USAGE_RECORDING = env.bool("SLUICE_USAGE_RECORDING", default=True)
SLUICE_USAGE_FLUSH_SECONDS = env.float("SLUICE_USAGE_FLUSH_SECONDS", default=1.0)
# Budgets' calendar days, weeks and months are counted in this time zone.
SLUICE_USAGE_TIME_ZONE = env.str("SLUICE_USAGE_TIME_ZONE", default="UTC")
try:
    zoneinfo.ZoneInfo(SLUICE_USAGE_TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(
        f"SLUICE_USAGE_TIME_ZONE: unknown time zone {SLUICE_USAGE_TIME_ZONE!r}"
    ) from None
# Seconds a budget's reservation for a call in flight waits for the call's usage report
# before it is charged at its estimate (a web process that died never reports).
SLUICE_BUDGET_RESERVATION_TTL = env.float("SLUICE_BUDGET_RESERVATION_TTL", default=SLUICE_LEASE_TTL)
# Batch inference is billed at this fraction of the list price (Together: 50% off).
SLUICE_BATCH_PRICE_FACTOR = env.float("SLUICE_BATCH_PRICE_FACTOR", default=0.5)
# Proxies (addresses or CIDRs) whose X-Forwarded-For names the caller, for the team API's
# auth-failure throttle. Empty: the TCP peer is the caller, whatever the header says.
SLUICE_TRUSTED_PROXIES = env.list("SLUICE_TRUSTED_PROXIES", default=[])
for _proxy in SLUICE_TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(f"SLUICE_TRUSTED_PROXIES: {exc}") from None

# --- Single sign-on (OpenID Connect, dashboard/oidc.py) -------------------------------
# Off unless SLUICE_OIDC_ISSUER is set. The provider's endpoints come from
# <issuer>/.well-known/openid-configuration, fetched at the first sign-in (not at start-up,
# so commands run without it), unless given below. docs/configuration.md,
# "Connecting an identity provider".
SLUICE_OIDC_ISSUER = env.str("SLUICE_OIDC_ISSUER", default="").rstrip("/")
SLUICE_OIDC = bool(SLUICE_OIDC_ISSUER)
# Off: only superusers (the break-glass admin `bootstrap` creates) sign in with a password;
# everyone else through the identity provider.
SLUICE_LOCAL_LOGIN = env.bool("SLUICE_LOCAL_LOGIN", default=True)
if not SLUICE_LOCAL_LOGIN and not SLUICE_OIDC:
    raise ImproperlyConfigured("SLUICE_LOCAL_LOGIN=false needs SLUICE_OIDC_ISSUER")
if SLUICE_OIDC:
    from dashboard.oidc_config import role_map_parse  # a plain module

    OIDC_RP_CLIENT_ID = env.str("SLUICE_OIDC_CLIENT_ID", default="")
    OIDC_RP_CLIENT_SECRET = env.str("SLUICE_OIDC_CLIENT_SECRET", default="")
    if not OIDC_RP_CLIENT_ID or not OIDC_RP_CLIENT_SECRET:
        raise ImproperlyConfigured(
            "SLUICE_OIDC_ISSUER needs SLUICE_OIDC_CLIENT_ID and SLUICE_OIDC_CLIENT_SECRET"
        )
    SLUICE_OIDC_ROLES_CLAIM = env.str("SLUICE_OIDC_ROLES_CLAIM", default="groups")
    SLUICE_OIDC_ROLE_MAP = role_map_parse(env.str("SLUICE_OIDC_ROLE_MAP", default=""))
    if not SLUICE_OIDC_ROLE_MAP:
        raise ImproperlyConfigured(
            "SLUICE_OIDC_ISSUER needs SLUICE_OIDC_ROLE_MAP: no one would get a role"
        )
    # "Sign in with <name>" on the login page.
    SLUICE_OIDC_PROVIDER_NAME = env.str(
        "SLUICE_OIDC_PROVIDER_NAME", default=SLUICE_OIDC_ISSUER.split("//")[-1].split("/")[0]
    )
    # Seconds for each call to the provider (discovery, token, keys, userinfo).
    OIDC_TIMEOUT = env.float("SLUICE_OIDC_TIMEOUT", default=10.0)
    # Endpoints given here are not discovered (a provider without discovery names them all).
    SLUICE_OIDC_ENDPOINTS = {
        name: env.str(f"SLUICE_OIDC_{name}_ENDPOINT", default="")
        for name in ("AUTHORIZATION", "TOKEN", "USERINFO", "JWKS", "END_SESSION")
    }
    OIDC_RP_SCOPES = env.str("SLUICE_OIDC_SCOPES", default="openid email profile")
    OIDC_RP_SIGN_ALGO = env.str("SLUICE_OIDC_SIGN_ALGO", default="RS256")
    OIDC_USE_PKCE = True
    OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
    OIDC_STORE_ID_TOKEN = True  # the hint for the provider's logout
    OIDC_OP_LOGOUT_URL_METHOD = "dashboard.oidc.provider_logout_url"
    LOGOUT_REDIRECT_URL = LOGIN_URL  # mozilla-django-oidc's logout needs one
    AUTHENTICATION_BACKENDS = ["dashboard.oidc.LocalPasswordBackend", "dashboard.oidc.OidcBackend"]

# Every line carries the request id (also returned as x-request-id and sent upstream);
# LOG_FORMAT=json writes one JSON object a line for log shippers. Secrets are never logged.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "limiter.logs.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "limiter.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env.str("LOG_FORMAT", default="plain"),
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},  # one INFO line per upstream call is noise, not a log
    },
}
