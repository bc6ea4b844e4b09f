"""The profile page's per-model rows (issue 11, point 1): added with form validation, shown,
removed; every change audited and in force through the configuration broadcast."""

from __future__ import annotations

import pytest
from django.urls import reverse

from dashboard.forms import ModelLimitForm
from dashboard.models import AuditEntry
from limiter.models import MSG_MODEL_BRACKETS, ConfigVersion, EndpointLimit, LimitProfile

pytestmark = pytest.mark.django_db

ROW = {
    "endpoint": "images",
    "model": "black-forest-labs/FLUX*",
    "requests_per_minute": "6",
    "burst": "1",
    "queue_depth": "100",
    "max_queue_wait_seconds": "30",
}


def add(client, profile: LimitProfile, **changes):
    url = reverse("dashboard:model_limit_create", args=[profile.pk])
    return client.post(url, {**ROW, **changes})


def test_a_model_row_is_added_shown_audited_and_broadcast(staff_client):
    profile = LimitProfile.objects.get(name="default")
    version = ConfigVersion.current()
    answer = add(staff_client, profile)
    assert answer.status_code == 302
    row = EndpointLimit.objects.get(profile=profile, model="black-forest-labs/FLUX*")
    assert (row.endpoint, row.requests_per_minute) == ("images", 6)
    assert ConfigVersion.current() > version  # the limiter and web processes reload
    entry = AuditEntry.objects.get(action="create", object_type="endpointlimit")
    assert entry.new_values["model"] == "black-forest-labs/FLUX*"
    page = staff_client.get(reverse("dashboard:profile", args=[profile.pk])).content.decode()
    assert 'data-model="black-forest-labs/FLUX*"' in page


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "black-forest-labs/FLUX["}, MSG_MODEL_BRACKETS),
        ({"model": "BLACK-forest-labs/flux*"}, ModelLimitForm.MSG_DUPLICATE),
        ({"model": ""}, "This field is required."),
    ],
)
def test_a_bad_or_duplicate_model_row_is_a_form_error(staff_client, changes, message):
    profile = LimitProfile.objects.get(name="default")
    assert add(staff_client, profile).status_code == 302  # the first FLUX* row
    answer = add(staff_client, profile, **changes)
    assert answer.status_code == 200  # the page again, with the error on the field
    assert message in answer.context["model_form"].errors["model"]
    assert EndpointLimit.objects.filter(profile=profile).exclude(model="").count() == 1


def test_removing_a_model_row_leaves_the_endpoints_row(staff_client):
    profile = LimitProfile.objects.get(name="default")
    add(staff_client, profile)
    row = EndpointLimit.objects.get(profile=profile, model="black-forest-labs/FLUX*")
    answer = staff_client.post(reverse("dashboard:model_limit_delete", args=[row.pk]))
    assert answer.status_code == 302
    assert not EndpointLimit.objects.filter(pk=row.pk).exists()
    endpoint_row = EndpointLimit.objects.get(profile=profile, endpoint="images", model="")
    # An endpoint's own row is not removed from here.
    answer = staff_client.post(reverse("dashboard:model_limit_delete", args=[endpoint_row.pk]))
    assert answer.status_code == 404


def test_a_non_staff_user_cannot_add_a_model_row(outsider_client):
    profile = LimitProfile.objects.get(name="default")
    assert add(outsider_client, profile).status_code == 403
    assert not EndpointLimit.objects.exclude(model="").exists()
