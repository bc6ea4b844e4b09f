"""Sluice's data: teams, their keys, limit profiles, upstream accounts, and the 429 record.

Single-row behaviour lives here; anything spanning models or with side effects is a
service (`limiter/services.py`).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from typing import TypeVar

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import PROTECT, ForeignKey
from django.utils import timezone

KEY_PREFIX = "sk-sluice-"
# Visible part of a key kept in clear for lookup in lists and the 429 record:
# "sk-sluice-" plus 6 characters of the random part.
VISIBLE_PREFIX_LENGTH = len(KEY_PREFIX) + 6
# The only environment variables an upstream account may take its key from. Any other
# name (SECRET_KEY, DATABASE_URL...) would send that secret as a bearer to the account's
# base URL, which whoever edits accounts chooses.
UPSTREAM_KEY_SETTING = re.compile(r"(TOGETHER_API_KEY|SLUICE_UPSTREAM_KEY_[A-Z0-9_]+)")
MSG_UPSTREAM_KEY_SETTING = (
    "Must be TOGETHER_API_KEY or an environment variable named SLUICE_UPSTREAM_KEY_<NAME>."
)


# The most inputs Sluice puts in one merged embeddings request. Together documents no
# maximum; its own guide batches about 100 (../shared/together-api.md), the seed 20.
COALESCE_MAX_INPUTS = 100


def upstream_key_setting_valid(name: str) -> bool:
    return UPSTREAM_KEY_SETTING.fullmatch(name) is not None


# Where an account's bearer may go: a base URL is a place to send TOGETHER_API_KEY, so
# whoever edits accounts must not be able to name any host.
MSG_UPSTREAM_HOST = (
    "This host is not one Sluice may send an upstream key to: add it to "
    "SLUICE_UPSTREAM_ALLOWED_HOSTS first."
)
MSG_UPSTREAM_SCHEME = "Must be https (plain http only to a loopback address)."


def _origin(url: str) -> tuple[str, str, int | None]:
    # httpx's parser: the one that builds the request, so the host checked is the host
    # connected to (urllib and httpx read odd URLs such as https://a\@b/ differently).
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.raw_host.decode("ascii").rstrip(".").lower(), parsed.port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def upstream_url_error(base_url: str) -> str | None:
    """Why an upstream account's key may not be sent to `base_url`; None when it may.

    The host must be on SLUICE_UPSTREAM_ALLOWED_HOSTS or be TOGETHER_BASE_URL's (both are
    the operator's, set in the environment), and the scheme https: plain http only to a
    loopback address (the sandbox), or when TOGETHER_BASE_URL itself says so. Checked on
    save (UpstreamAccount.clean) and again before every send (limiter/upstream.py)."""
    if not base_url:
        return None  # TOGETHER_BASE_URL
    return _url_error(
        base_url, settings.TOGETHER_BASE_URL, tuple(settings.SLUICE_UPSTREAM_ALLOWED_HOSTS)
    )


@functools.lru_cache(maxsize=64)  # the send path asks for every call
def _url_error(base_url: str, together_base_url: str, allowed: tuple[str, ...]) -> str | None:
    try:
        origin, together = _origin(base_url), _origin(together_base_url)
    except (httpx.InvalidURL, UnicodeDecodeError):
        return MSG_UPSTREAM_HOST
    scheme, host, _ = origin
    hosts = {entry.strip().strip("[]").rstrip(".").lower() for entry in allowed}
    if not host or (host not in hosts and host != together[1]):
        return MSG_UPSTREAM_HOST
    if scheme == "https" or origin == together:
        return None
    return None if scheme == "http" and _loopback(host) else MSG_UPSTREAM_SCHEME


class EndpointKind(models.TextChoices):
    CHAT = "chat", "Chat completions"
    COMPLETIONS = "completions", "Text completions"
    EMBEDDINGS = "embeddings", "Embeddings"
    IMAGES = "images", "Image generation"
    RERANK = "rerank", "Rerank"
    FINE_TUNES = "fine_tunes", "Fine-tune jobs"
    BATCHES = "batches", "Batch inference"
    FILES = "files", "Files"
    AUDIO_SPEECH = "audio_speech", "Audio speech (text to speech)"
    AUDIO_TRANSCRIPTION = "audio_transcription", "Audio transcription and translation"
    VIDEOS = "videos", "Video jobs"
    EVALUATIONS = "evaluations", "Evaluations"
    CODE_INTERPRETER = "code_interpreter", "Code interpreter"
    # Organisation-level management (limiter/gateway/org.py): refused to every team unless
    # its profile has a row for the kind; the row is then also its request rate.
    ORG_ENDPOINTS = "org_endpoints", "Dedicated endpoints (organisation)"
    ORG_MODELS = "org_models", "Model uploads (organisation)"
    ORG_TRAINING = "org_training", "Post-training and shaping (organisation)"
    ORG_DEPLOYMENTS = "org_deployments", "Deployments and their queue (organisation)"
    ORG_COMPUTE = "org_compute", "GPU clusters (organisation)"
    ORG_BILLING = "org_billing", "Billing usage (organisation)"
    ORG_PROJECTS = "org_projects", "Projects (organisation)"


# The organisation-level kinds: a team may use one only when its profile has a row for it.
ORG_KINDS = tuple(kind.value for kind in EndpointKind if kind.value.startswith("org_"))


class LimitProfile(models.Model):
    """A named set of per-endpoint limits, assigned to teams, keys and upstream accounts."""

    name = models.CharField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    # {"model-id": "fallback-model-id"}: served instead when the model stays overloaded.
    model_fallbacks = models.JSONField(default=dict, blank=True)
    # ["name", "org/prefix-*"]: fine-tuned models of teams on this profile that every
    # team may call (exact names or globs, matched without regard to case).
    shared_models = models.JSONField(default=list, blank=True)
    # Embeddings calls of this profile's keys are merged with other concurrent calls into
    # one upstream request (limiter/gateway/coalesce.py): Together limits embeddings by
    # requests, and one request may carry many inputs.
    coalesce_embeddings = models.BooleanField(
        default=True,
        help_text="Merge concurrent embeddings calls into one upstream request.",
    )
    coalesce_max_inputs = models.PositiveIntegerField(
        default=20,
        validators=[MinValueValidator(1), MaxValueValidator(COALESCE_MAX_INPUTS)],
        help_text=f"Inputs per merged upstream request (at most {COALESCE_MAX_INPUTS}).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


# Endpoint kinds whose calls name a model, so a profile may give a model its own limits.
MODEL_ENDPOINTS = (
    "chat",
    "completions",
    "embeddings",
    "images",
    "rerank",
    "audio_speech",
    "audio_transcription",
)
# A model override names one model or a glob of them: Together's ids are org/name with
# letters, digits and . _ - : + plus the glob's * ? and [...] classes; nothing else.
MODEL_PATTERN = re.compile(r"[A-Za-z0-9._\-:/+*?\[\]!]{1,200}")
# The same rule, empty allowed, as one regular expression for the ops API's document: plain
# characters, or a [...] class with something in it and no [ inside it.
MODEL_GLOB_DOCUMENTED = r"^(?:[A-Za-z0-9._\-:/+*?!\]]|\[[A-Za-z0-9._\-:/+*?!]+\])*$"
MSG_MODEL_PATTERN = (
    "One model name or glob (org/name, org/prefix*), 200 characters at most, no spaces."
)
MSG_MODEL_BRACKETS = "A glob's [ must be closed by ] with something between them."
MSG_MODEL_ENDPOINT = (
    "Per-model limits apply to chat, completions, embeddings, images, rerank and audio."
)


def model_pattern_error(pattern: str) -> str | None:
    """Why `pattern` is not a usable model name or glob; None when it is."""
    if not MODEL_PATTERN.fullmatch(pattern):
        return MSG_MODEL_PATTERN
    # fnmatch reads an unclosed [ as a literal; a typo like FLUX[ would silently match
    # nothing, so refuse it.
    depth = 0
    for index, char in enumerate(pattern):
        if char == "[":
            if depth:
                return MSG_MODEL_BRACKETS
            depth, opened = 1, index
        elif char == "]" and depth:
            if index == opened + 1:
                return MSG_MODEL_BRACKETS
            depth = 0
    return MSG_MODEL_BRACKETS if depth else None


def is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


class EndpointLimit(models.Model):
    """The limits of one endpoint kind within a profile, or of one model there.

    Requests are paced, not released a minute at a time: the bucket refills at
    `pace_per_minute` (or `requests_per_minute` when no pace is set) and holds at most
    `burst` requests, because Together enforces its limits per second.

    `model` blank is the endpoint's row. A row naming a model (exact, or a glob such as
    `black-forest-labs/FLUX*`, matched without regard to case) overrides it for the
    models it matches: exact beats glob, a longer glob beats a shorter one (see
    limiter/authority/config.py). On an upstream account's profile it is that model's cap and
    starting point; on a team's or key's, the key's own budget for that model, used
    instead of the endpoint's row for calls to it.
    """

    profile = models.ForeignKey(LimitProfile, on_delete=models.CASCADE, related_name="limits")
    endpoint = models.CharField(max_length=20, choices=EndpointKind.choices)
    model = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Empty: the endpoint's limits. A model name or glob: that model's own.",
    )
    requests_per_minute = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    pace_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Rate actually released, below the limit for headroom; empty: the limit itself.",
    )
    burst = models.PositiveIntegerField(default=5, validators=[MinValueValidator(1)])
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    queue_depth = models.PositiveIntegerField(default=100)
    max_queue_wait_seconds = models.FloatField(default=30.0, validators=[MinValueValidator(0.0)])
    # Batches only: the most requests one batch may carry.
    max_batch_requests = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    # Shadow: evaluated and its would-be refusals recorded, but never refuses or delays.
    shadow = models.BooleanField(
        default=False,
        help_text="Shadow: record what this row would refuse, but admit every call.",
    )

    class Meta:
        ordering = ["profile__name", "endpoint", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["profile", "endpoint", "model"], name="one_limit_per_endpoint_model"
            ),
        ]

    def __str__(self) -> str:
        name = f"{self.profile.name}/{self.endpoint}"
        return f"{name}/{self.model}" if self.model else name

    def clean(self) -> None:
        if self.model:
            error = model_pattern_error(self.model)
            if error is None and self.endpoint not in MODEL_ENDPOINTS:
                error = MSG_MODEL_ENDPOINT
            if error:
                raise ValidationError({"model": error})

    @property
    def effective_per_minute(self) -> int:
        # The rate the bucket refills at: the pace when set, never above the limit.
        return min(self.pace_per_minute or self.requests_per_minute, self.requests_per_minute)


class UpstreamAccount(models.Model):
    """One Together account: the hard ceiling every team routed to it shares.

    The secret is never stored here: `api_key_setting` names the environment variable
    that holds it (TOGETHER_API_KEY or SLUICE_UPSTREAM_KEY_<NAME>), so a second account is
    a new row plus one variable.
    """

    name = models.CharField(max_length=80, unique=True)
    base_url = models.URLField(blank=True, help_text="Empty: TOGETHER_BASE_URL.")
    api_key_setting = models.CharField(max_length=80, default="TOGETHER_API_KEY")
    profile = models.ForeignKey(LimitProfile, on_delete=models.PROTECT, related_name="accounts")
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="one_default_account",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # The key comes from a variable made for upstream keys, never from another secret.
        errors = {}
        if not upstream_key_setting_valid(self.api_key_setting):
            errors["api_key_setting"] = MSG_UPSTREAM_KEY_SETTING
        # The key goes to the base URL: only to a host the operator allowed.
        if (message := upstream_url_error(self.base_url)) is not None:
            errors["base_url"] = message
        if errors:
            raise ValidationError(errors)


class LearnedCeiling(models.Model):
    """What the limiter learned of one model's limit on one account, kept across restarts.

    Written by the limiter in batches, off its decision path
    (limiter/authority/learning.py), and read when a limiter starts so it paces each model
    where the last one left off instead of at the profile's starting point. Rows older than
    SLUICE_LEARNED_CEILING_MAX_AGE are ignored then: Together's dynamic limit follows
    recent traffic, so an old reading says little.
    """

    account = models.ForeignKey(
        UpstreamAccount, on_delete=models.CASCADE, related_name="learned_ceilings"
    )
    endpoint = models.CharField(max_length=20, choices=EndpointKind.choices)
    model = models.CharField(max_length=200)
    learned_per_minute = models.FloatField(null=True, blank=True)
    learned_tokens_per_minute = models.FloatField(null=True, blank=True)
    pace_per_minute = models.FloatField()
    token_pace_per_minute = models.FloatField(null=True, blank=True)
    source = models.CharField(max_length=10)  # "profile" | "headers" | "429"
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["account_id", "endpoint", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "endpoint", "model"], name="one_learned_ceiling_per_model"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account_id}/{self.endpoint}/{self.model}: {self.pace_per_minute:.1f}/min"


class DedicatedModel(models.Model):
    """A model one of the account's dedicated endpoints serves: Together sets no rate limit
    there, so its calls are not held to the account's per-model ceiling (only to the
    team's key limits and budgets; limiter/authority/scopes.py).

    Found by polling Together's endpoint list (limiter/authority/dedicated.py), which adds
    and removes the rows it found; a row marked `by_hand` is ops' and the poll leaves it.
    A change is a configuration change (limiter/signals.py): the limiter reloads."""

    account = models.ForeignKey(
        UpstreamAccount, on_delete=models.CASCADE, related_name="dedicated_models"
    )
    model = models.CharField(max_length=200)
    by_hand = models.BooleanField(default=False, help_text="Marked by ops, not found upstream.")
    endpoint_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["account_id", "model"]
        constraints = [
            models.UniqueConstraint(fields=["account", "model"], name="one_dedicated_row_per_model")
        ]

    def __str__(self) -> str:
        return f"{self.model} (dedicated{', by hand' if self.by_hand else ''})"


class Priority(models.TextChoices):
    """Who goes first for what the guaranteed shares leave (limiter/authority/sharing.py)."""

    CRITICAL = "critical", "Critical"
    STANDARD = "standard", "Standard"
    BACKGROUND = "background", "Background (only when nobody else waits)"


# A team's weight: its part of what the shares leave, beside others of its priority.
MIN_WEIGHT, MAX_WEIGHT = 0.01, 1000.0


class Team(models.Model):
    name = models.CharField(max_length=80, unique=True)
    # ForeignKey and PROTECT by their own names: django-stubs gives Team the reverse
    # accessor `models` (TeamModel's related_name), which mypy can take for the module here.
    profile = ForeignKey(LimitProfile, on_delete=PROTECT, related_name="teams")
    upstream = ForeignKey(UpstreamAccount, on_delete=PROTECT, related_name="teams")
    paused = models.BooleanField(default=False, help_text="A paused team's requests are refused.")
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.STANDARD)
    weight = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(MIN_WEIGHT), MaxValueValidator(MAX_WEIGHT)],
        help_text="Its part of what guaranteed shares leave, beside teams of its priority.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


_Secret = TypeVar("_Secret", bound="HashedSecret")


class SecretQuerySet(models.QuerySet[_Secret]):
    def usable(self) -> SecretQuerySet[_Secret]:
        """Neither revoked nor expired."""
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class HashedSecret(models.Model):
    """A secret shown once and kept only as its SHA-256: team keys, personal tokens."""

    secret_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @staticmethod
    def hash_secret(secret: str) -> str:
        # 32 random bytes: a fast hash is enough, there is nothing to brute-force.
        return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(HashedSecret):
    """A team's key. Only a SHA-256 of the secret is kept; the secret is shown once."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=80, blank=True)
    prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH, db_index=True)
    profile = models.ForeignKey(
        LimitProfile,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="keys",
        help_text="Empty: the team's profile.",
    )
    priority = models.CharField(
        max_length=10, choices=Priority.choices, blank=True, help_text="Empty: the team's."
    )

    objects = SecretQuerySet["ApiKey"].as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.team.name})"

    @property
    def effective_priority(self) -> str:
        return self.priority or self.team.priority


MSG_SHARE_OWNER = "A share belongs to a team or to a key, not both."
MSG_SHARE_TOTAL = "Shares on {scope} would add up to {total:.0%}; at most 100%."
MSG_SHARE_MODEL_ENDPOINT = (
    "A model's share applies to chat, completions, embeddings, images or rerank."
)
MSG_SHARE_GLOB = "A share names one model exactly (no wildcards)."


class Share(models.Model):
    """A guaranteed share of an upstream account's ceiling on one endpoint kind (every
    model of it, each on its own) or on one model: a fraction of the ceiling in force, so
    it follows a learned ceiling. Held by a team, or by one key (then the key is a class
    of its own). On each model the shares that apply (the model's row, else the
    endpoint's) add up to at most 100%."""

    account = models.ForeignKey(UpstreamAccount, on_delete=models.CASCADE, related_name="shares")
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, null=True, blank=True, related_name="shares"
    )
    key = models.ForeignKey(
        ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="shares"
    )
    endpoint = models.CharField(max_length=20, choices=EndpointKind.choices)
    model = models.CharField(
        max_length=200, blank=True, help_text="Empty: each model of the endpoint kind."
    )
    fraction = models.FloatField(validators=[MinValueValidator(0.001), MaxValueValidator(1.0)])

    class Meta:
        ordering = ["account__name", "endpoint", "model"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(team__isnull=False, key__isnull=True)
                | models.Q(team__isnull=True, key__isnull=False),
                name="share_team_or_key",
            ),
            models.CheckConstraint(
                condition=models.Q(fraction__gt=0, fraction__lte=1), name="share_fraction"
            ),
            models.UniqueConstraint(
                fields=["account", "team", "endpoint", "model"], name="one_share_per_team"
            ),
            models.UniqueConstraint(
                fields=["account", "key", "endpoint", "model"], name="one_share_per_key"
            ),
        ]

    def __str__(self) -> str:
        owner = self.team.name if self.team else str(self.key)
        where = f"{self.endpoint}/{self.model}" if self.model else self.endpoint
        return f"{owner}: {self.fraction:.0%} of {self.account.name} {where}"

    @property
    def holder(self) -> str:
        """The class it guarantees, as the limiter names it."""
        return f"team:{self.team_id}" if self.team_id else f"key:{self.key_id}"

    def clean(self) -> None:
        if (self.team_id is None) == (self.key_id is None):
            raise ValidationError(MSG_SHARE_OWNER)
        self.model = self.model.strip().lower()
        if self.model:
            error = model_pattern_error(self.model)
            if error is None and is_glob(self.model):
                error = MSG_SHARE_GLOB
            if error is None and self.endpoint not in MODEL_ENDPOINTS:
                error = MSG_SHARE_MODEL_ENDPOINT
            if error:
                raise ValidationError({"model": error})
        if self.account_id is not None and self.fraction is not None:
            self._check_total()

    def _check_total(self) -> None:
        """With this row, the shares that apply on each model add up to at most 100%."""
        rows = {
            (row.holder, row.model): row.fraction
            for row in Share.objects.filter(account_id=self.account_id, endpoint=self.endpoint)
            .exclude(pk=self.pk)
            .select_related(None)
        }
        rows[(self.holder, self.model)] = self.fraction
        for model in {m for _holder, m in rows} | {""}:
            holders = {h for h, _m in rows}
            total = sum(rows.get((h, model), rows.get((h, ""), 0.0)) for h in holders)
            if total > 1.0 + 1e-9:
                scope = f"{self.endpoint}/{model}" if model else self.endpoint
                raise ValidationError(
                    {"fraction": MSG_SHARE_TOTAL.format(scope=scope, total=total)}
                )


class ConfigVersion(models.Model):
    """One row: a counter bumped in the same transaction as every change to teams, keys,
    profiles, limits and accounts (limiter/signals.py). The limiter loads the limits
    itself and tickets carry the version their web process saw, so a ticket from a
    newer configuration than the limiter's makes it reload before deciding."""

    version = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"configuration version {self.version}"

    @classmethod
    def current(cls) -> int:
        return cls.objects.filter(pk=1).values_list("version", flat=True).first() or 0

    @classmethod
    def bump(cls) -> None:
        # Conditional UPDATE, not read-then-write: concurrent changes each count.
        if not cls.objects.filter(pk=1).update(version=models.F("version") + 1):
            cls.objects.get_or_create(pk=1, defaults={"version": 1})


class RefusalSource(models.TextChoices):
    GATEWAY = "gateway", "Gateway"
    UPSTREAM = "upstream", "Upstream (Together)"


class Refusal(models.Model):
    """One 429, from Sluice or from Together: the auditors' record.

    Written in batches off the request path (`limiter/gateway/refusals.py`). Team name and key
    prefix are copied so the record survives deleting the team or key.
    """

    created_at = models.DateTimeField(default=timezone.now)
    team = models.ForeignKey(
        Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    team_name = models.CharField(max_length=80, blank=True)
    key_prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH, blank=True)
    upstream = models.CharField(max_length=80, blank=True)
    endpoint = models.CharField(max_length=20, choices=EndpointKind.choices)
    model = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=40)
    source = models.CharField(max_length=10, choices=RefusalSource.choices)
    retry_after_seconds = models.FloatField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    message = models.CharField(max_length=300, blank=True)
    # A shadow row's or budget's would-be refusal: the call itself was admitted.
    shadow = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The history page's first page and time-range filter.
            models.Index(fields=["-created_at", "-id"], name="refusal_recent"),
            # Filters combined with a time range, newest first.
            models.Index(fields=["team", "-created_at"], name="refusal_team_time"),
            models.Index(fields=["key_prefix", "-created_at"], name="refusal_key_time"),
            models.Index(fields=["endpoint", "-created_at"], name="refusal_endpoint_time"),
            models.Index(fields=["reason", "-created_at"], name="refusal_reason_time"),
            models.Index(fields=["source", "-created_at"], name="refusal_source_time"),
            models.Index(fields=["model", "-created_at"], name="refusal_model_time"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.team_name} {self.endpoint} {self.reason}"


class ManagedObject(models.Model):
    """An object Together keeps that a team created through Sluice, and that Sluice does
    not hold as a job: an evaluation (limiter/gateway/forwarded.py), or an organisation-level
    object (a dedicated endpoint, an uploaded model, a deployment, a cluster...:
    limiter/gateway/org.py). Every team's live in the one Together account, so only the team
    that made one may name it: another team's id is answered as an unknown one."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="managed_objects")
    kind = models.CharField(max_length=20, choices=EndpointKind.choices)
    object_id = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "object_id"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "object_id"], name="one_owner_per_object")
        ]

    def __str__(self) -> str:
        return f"{self.kind}/{self.object_id} ({self.team_id})"
