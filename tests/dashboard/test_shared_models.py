"""A limit profile's shared fine-tuned models, edited on its dashboard page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from dashboard.forms import MSG_MODEL_NAME
from dashboard.models import AuditEntry
from limiter.jobs import ownership
from limiter.models import LimitProfile

pytestmark = pytest.mark.django_db


def test_shared_models_are_edited_one_a_line_and_drop_the_ownership_map(
    staff_client, django_capture_on_commit_callbacks
):
    profile = LimitProfile.objects.get(name="default")
    ownership.owned_models.load()  # loaded: the save must drop it
    assert ownership.owned_models.loaded is not None
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("dashboard:profile", args=[profile.pk]),
            {
                "name": "default",
                "description": profile.description,
                "shared_models": "org/tuned-1\n\n  org/shared-*  \n",
                "coalesce_embeddings": "on",
                "coalesce_max_inputs": 20,
            },
        )
    assert response.status_code == 302
    assert ownership.owned_models.loaded is None
    profile.refresh_from_db()
    assert profile.shared_models == ["org/tuned-1", "org/shared-*"]
    assert AuditEntry.objects.get(object_type="limitprofile").new_values == {
        "shared_models": ["org/tuned-1", "org/shared-*"]
    }
    page = staff_client.get(reverse("dashboard:profile", args=[profile.pk])).content.decode()
    assert "org/tuned-1\norg/shared-*" in page


def test_shared_model_names_with_spaces_are_refused(staff_client):
    profile = LimitProfile.objects.get(name="default")
    response = staff_client.post(
        reverse("dashboard:profile", args=[profile.pk]),
        {"name": "default", "description": profile.description, "shared_models": "org/a b"},
    )
    assert response.status_code == 200
    assert MSG_MODEL_NAME.format(name="org/a b") in response.content.decode().replace("&#x27;", "'")
    profile.refresh_from_db()
    assert profile.shared_models == []
