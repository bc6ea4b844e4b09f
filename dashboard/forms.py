"""Forms of the dashboard pages. They validate; `dashboard/services.py` saves and audits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from limiter import selectors
from limiter.models import ApiKey, EndpointKind, EndpointLimit, LimitProfile, RefusalSource, Team
from limiter.usage.models import Budget

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
        fields = ["name", "description", "shared_models"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}


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

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        if start and end and start >= end:
            self.add_error("end", MSG_RANGE)
        return data

    def filters(self) -> selectors.RefusalFilters:
        data = self.cleaned_data if self.is_valid() else {}
        return selectors.RefusalFilters(
            start=data.get("start"),
            end=data.get("end"),
            team=data.get("team"),
            key_prefix=data.get("key_prefix", "").strip(),
            endpoint=data.get("endpoint", ""),
            model=data.get("model", "").strip(),
            reason=data.get("reason", "").strip(),
            source=data.get("source", ""),
        )


class BudgetForm(forms.ModelForm):
    """A budget on the team page: its keys only; the model validates the rest (limit
    above zero, threshold between 1% and 100%, a key of the budget's own team)."""

    class Meta:
        model = Budget
        fields = ["key", "model", "unit", "period", "limit", "soft_threshold"]
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
