"""Forms of the dashboard pages. They validate; `dashboard/services.py` saves and audits."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import QueryDict
from django.utils import timezone

from dashboard import auth_throttle
from dashboard.models import TokenScope
from limiter import selectors
from limiter.alerts.models import RATE_FIELDS, Webhook
from limiter.alerts.services import Rates
from limiter.models import (
    MODEL_ENDPOINTS,
    ApiKey,
    EndpointKind,
    EndpointLimit,
    LimitProfile,
    RefusalSource,
    Share,
    Team,
    UpstreamAccount,
)
from limiter.usage.models import Budget
from limiter.usage.selectors import UsageQuery

MSG_NEGATIVE = "Must be 0 or more."
MSG_BURST = "Burst must be at least 1."
MSG_POSITIVE = "Must be at least 1; leave it empty for no limit."
MSG_RATE = "Must be at least 1 request a minute."
MSG_PACE_ABOVE_LIMIT = "The pace cannot be above the limit; leave it empty to pace at the limit."
# What <input type="datetime-local"> reads back; times are UTC (settings.TIME_ZONE).
LOCAL_INPUT_FORMAT = "%Y-%m-%dT%H:%M"
MSG_RANGE = "The start must be before the end."
MSG_MODEL_NAME = "One model name or glob a line, without spaces: {name!r}."


class LimitForm(forms.ModelForm):
    class Meta:
        model = EndpointLimit
        fields = [
            "requests_per_minute",
            "pace_per_minute",
            "burst",
            "tokens_per_minute",
            "max_concurrent",
            "queue_depth",
            "max_queue_wait_seconds",
            "max_batch_requests",
            "shadow",
        ]
        labels = {
            "requests_per_minute": "Limit (req/min)",
            "pace_per_minute": "Pace (req/min)",
            "burst": "Burst (requests)",
            "tokens_per_minute": "Tokens per minute",
            "max_concurrent": "Max concurrent",
            "queue_depth": "Queue depth (requests)",
            "max_queue_wait_seconds": "Max queue wait (s)",
            "max_batch_requests": "Max requests per batch",
        }
        error_messages = {
            "requests_per_minute": {"min_value": MSG_RATE},
            "pace_per_minute": {"min_value": MSG_RATE},
            "burst": {"min_value": MSG_BURST},
            "tokens_per_minute": {"min_value": MSG_RATE},
            "max_concurrent": {"min_value": MSG_POSITIVE},
            "max_batch_requests": {"min_value": MSG_POSITIVE},
            "queue_depth": {"min_value": MSG_NEGATIVE},
            "max_queue_wait_seconds": {"min_value": MSG_NEGATIVE},
        }

    def clean(self) -> dict[str, Any]:
        # The stubs let clean() return None (an override may); Django's own returns
        # cleaned_data, which is what this adds errors against.
        super().clean()
        data = self.cleaned_data
        rpm, pace = data.get("requests_per_minute"), data.get("pace_per_minute")
        if rpm and pace and pace > rpm:
            self.add_error("pace_per_minute", MSG_PACE_ABOVE_LIMIT)
        return data


class ModelLimitForm(LimitForm):
    """A model's own row in a profile: a name or glob on one inference endpoint kind.
    The model's clean() refuses a bad glob; a duplicate (any case) is refused here."""

    MSG_DUPLICATE = "This profile already has a limit for this model on this endpoint."

    class Meta(LimitForm.Meta):
        fields = ["endpoint", "model", *LimitForm.Meta.fields]
        labels = {
            **LimitForm.Meta.labels,
            "model": "Model or glob",
            "endpoint": "Endpoint",
        }

    def __init__(self, data: Any = None, *, profile: LimitProfile) -> None:
        super().__init__(data, instance=EndpointLimit(profile=profile))
        endpoint = self.fields["endpoint"]
        assert isinstance(endpoint, forms.ChoiceField)
        endpoint.choices = [
            (value, label) for value, label in EndpointKind.choices if value in MODEL_ENDPOINTS
        ]
        self.fields["model"].required = True
        self.fields["model"].widget.attrs["placeholder"] = "black-forest-labs/FLUX*"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        model = (data.get("model") or "").strip()
        data["model"] = model
        if (
            model
            and data.get("endpoint")
            and self.instance.profile.limits.filter(
                endpoint=data["endpoint"], model__iexact=model
            ).exists()
        ):
            self.add_error("model", self.MSG_DUPLICATE)
        return data

    def limit_data(self) -> dict[str, Any]:
        """The row's limits, for services.limit_create."""
        return {name: self.cleaned_data[name] for name in LimitForm.Meta.fields}


class CeilingResetForm(forms.Form):
    """Which model's learned ceiling to forget (the live page's Reset button)."""

    account = forms.ModelChoiceField(queryset=UpstreamAccount.objects.all())
    endpoint = forms.ChoiceField(choices=[(e, e) for e in MODEL_ENDPOINTS])
    model = forms.CharField(max_length=200)


class ProfileCreateForm(forms.Form):
    name = forms.CharField(max_length=80)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    copy_from = forms.ModelChoiceField(
        queryset=LimitProfile.objects.all(),
        required=False,
        empty_label="default",
        help_text="The new profile starts with this profile's limits.",
    )


class ModelNamesField(forms.CharField):
    """A list of model names or globs, edited one a line."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value: object) -> object:
        return "\n".join(str(name) for name in value) if isinstance(value, list) else value

    def to_python(self, value: object) -> list[str]:  # type: ignore[override]
        names = [line.strip() for line in str(value or "").splitlines()]
        return [name for name in names if name]

    def validate(self, value: list[str]) -> None:
        for name in value:
            if len(name) > 300 or any(char.isspace() for char in name):
                raise forms.ValidationError(MSG_MODEL_NAME.format(name=name))


class ProfileForm(forms.ModelForm):
    shared_models = ModelNamesField(
        required=False,
        label="Shared fine-tuned models",
        help_text="Fine-tuned models of this profile's teams that every team may call: "
        "one exact name or glob (org/name-*) a line. Other teams' models answer 404.",
    )

    class Meta:
        model = LimitProfile
        fields = [
            "name",
            "description",
            "shared_models",
            "coalesce_embeddings",
            "coalesce_max_inputs",
        ]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        labels = {
            "coalesce_embeddings": "Merge embeddings calls",
            "coalesce_max_inputs": "Inputs per merged request",
        }


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=80)
    profile = forms.ModelChoiceField(
        queryset=LimitProfile.objects.all(), required=False, empty_label="default"
    )


class ProfileAssignForm(forms.Form):
    profile = forms.ModelChoiceField(queryset=LimitProfile.objects.all())


class KeyCreateForm(forms.Form):
    name = forms.CharField(max_length=80, required=False)
    profile = forms.ModelChoiceField(
        queryset=LimitProfile.objects.all(), required=False, empty_label="the team's profile"
    )
    expires_in_days = forms.IntegerField(min_value=1, required=False, label="Expires in (days)")

    def __init__(self, *args: Any, any_profile: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any_profile:
            # A team maintainer's keys stay within the team's profile.
            del self.fields["profile"]

    def expires_at(self) -> datetime | None:
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None


class RefusalFilterForm(forms.Form):
    """The 429 history's filters, from the query string (GET: bookmarkable, no CSRF)."""

    start = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=LOCAL_INPUT_FORMAT),
    )
    end = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=LOCAL_INPUT_FORMAT),
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.all(), required=False, empty_label="all teams", to_field_name="name"
    )
    key_prefix = forms.CharField(required=False, max_length=16, label="Key prefix")
    endpoint = forms.ChoiceField(
        choices=[("", "all endpoints"), *EndpointKind.choices], required=False
    )
    model = forms.CharField(required=False, max_length=200)
    reason = forms.CharField(
        required=False, max_length=40, widget=forms.TextInput(attrs={"list": "reasons"})
    )
    source = forms.ChoiceField(
        choices=[("", "all sources"), *RefusalSource.choices], required=False
    )
    mode = forms.ChoiceField(
        choices=[
            ("", "refused and shadow"),
            (selectors.MODE_ENFORCED, "refused"),
            (selectors.MODE_SHADOW, "shadow (admitted)"),
        ],
        required=False,
    )

    def __init__(self, data: QueryDict | None = None, *, teams: frozenset[int] | None = None):
        super().__init__(data)
        # The rows and the team choices of the reader's visible teams (None: all).
        self.teams = teams
        if teams is not None:
            self.fields["team"].queryset = Team.objects.filter(pk__in=teams)  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        if start and end and start >= end:
            self.add_error("end", MSG_RANGE)
        return data

    def filters(self) -> selectors.RefusalFilters:
        data = self.cleaned_data if self.is_valid() else {}
        if "team" in self.errors:
            # A team that does not exist, or that the reader may not see: no row at all
            # (the other filters' errors leave every visible row).
            return selectors.RefusalFilters(teams=frozenset())
        return selectors.RefusalFilters(
            teams=self.teams,
            start=data.get("start"),
            end=data.get("end"),
            team=data.get("team"),
            key_prefix=data.get("key_prefix", "").strip(),
            endpoint=data.get("endpoint", ""),
            model=data.get("model", "").strip(),
            reason=data.get("reason", "").strip(),
            source=data.get("source", ""),
            mode=data.get("mode", ""),
        )


MSG_DAYS = "The first day must not be after the last."
MSG_DAY_RANGE = "Choose at most {days} days."
MSG_DAY_BOUNDS = "Choose days between {first} and {last}."
USAGE_GROUPS = [
    ("day", "Day"),
    ("team", "Team"),
    ("model", "Model"),
    ("endpoint", "Endpoint"),
    ("key", "Key"),
    ("status", "Status"),
]
USAGE_DEFAULT_GROUPS = ["day", "team"]
USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 3660  # ten years: the chart has a point per day
USAGE_FIRST_DAY, USAGE_LAST_DAY = date(2000, 1, 1), date(2099, 12, 31)


class UsageFilterForm(forms.Form):
    """The Usage page's filters, from the query string (GET: bookmarkable, no CSRF).

    Days are calendar days in SLUICE_USAGE_TIME_ZONE, both ends included. What the
    query leaves out takes its default (the last 30 days, per day and team, the chart
    in dollars), written into the form so the page shows what it used."""

    start = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    end = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.order_by("name"),
        required=False,
        empty_label="all teams",
        to_field_name="name",
    )
    model = forms.CharField(
        required=False, max_length=200, widget=forms.TextInput(attrs={"list": "models"})
    )
    endpoint = forms.ChoiceField(
        choices=[("", "all endpoints"), *EndpointKind.choices], required=False
    )
    key_prefix = forms.CharField(required=False, max_length=16, label="Key prefix")
    group_by = forms.MultipleChoiceField(
        choices=USAGE_GROUPS,
        required=False,
        label="Group by",
        widget=forms.CheckboxSelectMultiple,
    )
    metric = forms.ChoiceField(
        choices=[("cost", "Cost ($)"), ("tokens", "Tokens")], required=False, label="Chart"
    )

    def __init__(
        self, data: QueryDict, *, today: date, teams: frozenset[int] | None = None
    ) -> None:
        data = data.copy()
        if not data.get("end"):
            data["end"] = today.isoformat()
        if not data.get("start"):
            # From the last day asked for (or today), so a lone "To" still shows 30 days.
            try:
                last = forms.DateField().to_python(str(data["end"])) or today
            except ValidationError:
                last = today  # the field reports it
            data["start"] = (last - timedelta(days=USAGE_DEFAULT_DAYS - 1)).isoformat()
        if not data.getlist("group_by"):
            data.setlist("group_by", USAGE_DEFAULT_GROUPS)
        if not data.get("metric"):
            data["metric"] = "cost"
        super().__init__(data)
        self.query_data = data  # the filters in force, defaults included: the CSV link's
        # The rows and the team choices of the reader's visible teams (None: all); another
        # team named in the query is an invalid choice, so no figure is shown.
        self.teams = teams
        if teams is not None:
            self.fields["team"].queryset = Team.objects.filter(pk__in=teams).order_by("name")  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        for name in ("start", "end"):
            day = data.get(name)
            if day is not None and not USAGE_FIRST_DAY <= day <= USAGE_LAST_DAY:
                self.add_error(
                    name, MSG_DAY_BOUNDS.format(first=USAGE_FIRST_DAY, last=USAGE_LAST_DAY)
                )
                return data
        if start and end:
            if start > end:
                self.add_error("end", MSG_DAYS)
            elif (end - start).days + 1 > USAGE_MAX_DAYS:
                self.add_error("start", MSG_DAY_RANGE.format(days=USAGE_MAX_DAYS))
        return data

    def query(self, *, zone: ZoneInfo) -> UsageQuery:
        """The filters as the selectors take them (call once the form is valid)."""
        data = self.cleaned_data
        start, end = data["start"], data["end"]
        # In the query string's order of the choices, so the columns do not jump around.
        group_by = [name for name, _label in USAGE_GROUPS if name in data["group_by"]]
        return UsageQuery(
            first_day=start,
            last_day=end,
            since=datetime.combine(start, time(), tzinfo=zone),
            until=datetime.combine(end + timedelta(days=1), time(), tzinfo=zone),
            team_id=data["team"].pk if data["team"] else None,
            model=data["model"].strip(),
            endpoint=data["endpoint"],
            key_prefix=data["key_prefix"].strip(),
            group_by=tuple(group_by),
            metric=data["metric"],
            teams=self.teams,
        )


RATE_LABELS = {
    "team_429_per_minute": "A team's 429s a minute",
    "upstream_429_per_minute": "Together's 429s a minute",
    "upstream_503_per_minute": "Together's 503s a minute",
}


class WebhookRatesForm(forms.ModelForm):
    """A webhook's own alert thresholds; empty fields fall back to the global settings.
    The model's `clean` refuses Together's thresholds on a team's webhook."""

    class Meta:
        model = Webhook
        fields = list(RATE_FIELDS.values())
        labels = RATE_LABELS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = {
            "team_429_per_minute": settings.SLUICE_ALERT_TEAM_429_PER_MINUTE,
            "upstream_429_per_minute": settings.SLUICE_ALERT_UPSTREAM_429_PER_MINUTE,
            "upstream_503_per_minute": settings.SLUICE_ALERT_UPSTREAM_503_PER_MINUTE,
        }
        for name, default in defaults.items():
            self.fields[name].help_text = f"Empty: the global setting ({default})."
            self.fields[name].widget.attrs["placeholder"] = str(default)

    def rates(self) -> Rates:
        return cast(Rates, {name: self.cleaned_data[name] for name in RATE_FIELDS.values()})


class WebhookForm(WebhookRatesForm):
    url = forms.URLField(
        max_length=500,
        assume_scheme="https",
        label="Webhook URL",
        help_text="Slack-compatible; shown redacted once saved.",
    )
    team = forms.ModelChoiceField(
        Team.objects.all(), required=False, empty_label="the whole organisation"
    )

    class Meta(WebhookRatesForm.Meta):
        fields = ["name", "url", "team", *RATE_FIELDS.values()]


class BudgetForm(forms.ModelForm):
    """A budget on the team page: its keys only; the model validates the rest (limit
    above zero, threshold between 1% and 100%, a key of the budget's own team)."""

    class Meta:
        model = Budget
        fields = ["key", "model", "unit", "period", "limit", "soft_threshold", "shadow"]
        labels = {
            "key": "Key",
            "model": "Model",
            "limit": "Limit",
            "soft_threshold": "Alert at (fraction)",
        }
        widgets = {"model": forms.TextInput(attrs={"placeholder": "all models"})}

    def __init__(self, *args: Any, team: Team, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance.team = team
        # Only this team's keys can be chosen: another team's is "not a valid choice".
        key_field = self.fields["key"]
        assert isinstance(key_field, forms.ModelChoiceField)
        key_field.queryset = ApiKey.objects.filter(team=team, revoked_at__isnull=True)
        key_field.empty_label = "every key of the team"


MSG_LOGIN_THROTTLED = "Too many failed logins. Try again in %(seconds)d seconds."


class LoginForm(AuthenticationForm):
    """Django's login, throttled per account and per address (dashboard/auth_throttle.py):
    past the limit the password is not even checked, so guessing is slowed for real."""

    def clean(self) -> dict[str, Any]:
        request = self.request
        assert request is not None  # LoginView passes it
        username = self.cleaned_data.get("username") or ""
        wait = auth_throttle.login_wait(request, username)
        if wait:
            raise ValidationError(
                MSG_LOGIN_THROTTLED, code="throttled", params={"seconds": math.ceil(wait)}
            )
        try:
            return super().clean()
        except ValidationError:
            auth_throttle.login_failed(request, username)
            raise


class TokenCreateForm(forms.Form):
    """A personal API token: a name, full (the user's role) or read only, an expiry."""

    name = forms.CharField(max_length=80, required=False)
    scope = forms.ChoiceField(choices=TokenScope.choices, initial=TokenScope.FULL)
    expires_in_days = forms.IntegerField(
        min_value=1, max_value=3650, required=False, label="Expires in (days)"
    )

    def expires_at(self) -> datetime | None:
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None


class TeamSharingForm(forms.ModelForm):
    """A team's priority and weight on the team page (issue 21)."""

    class Meta:
        model = Team
        fields = ["priority", "weight"]


class ShareForm(forms.ModelForm):
    """A guaranteed share for the team (or one of its keys) on the team page; the model
    validates the rest (a fraction in (0, 1], at most 100% on the scope, one model)."""

    class Meta:
        model = Share
        fields = ["account", "endpoint", "model", "key", "fraction"]
        labels = {"fraction": "Share (0-1)", "key": "Key"}
        widgets = {"model": forms.TextInput(attrs={"placeholder": "each model"})}

    def __init__(self, *args: Any, team: Team, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.team = team
        key_field = self.fields["key"]
        assert isinstance(key_field, forms.ModelChoiceField)
        key_field.queryset = ApiKey.objects.filter(team=team, revoked_at__isnull=True)
        key_field.empty_label = "the team (every key)"
        self.instance.team = team

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # A key's share is the key's alone (the model wants a team or a key, not both).
        self.instance.team = None if cleaned.get("key") is not None else self.team
        return cleaned
