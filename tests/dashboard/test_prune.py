from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from limiter.models import Refusal
from tests.dashboard.conftest import make_refusals

pytestmark = pytest.mark.django_db


def test_prune429_deletes_only_older_rows_in_batches(team, settings, capsys):
    settings.SLUICE_REFUSAL_RETENTION_DAYS = 30
    make_refusals(team, 25, start=timezone.now() - timedelta(days=40), step_seconds=60)
    kept = make_refusals(team, 5, start=timezone.now() - timedelta(days=2), step_seconds=60)
    call_command("prune429", "--batch-size", "7")
    assert sorted(Refusal.objects.values_list("id", flat=True)) == sorted(r.pk for r in kept)
    assert "Deleted 25 refusals older than 30 days" in capsys.readouterr().out


def test_prune429_days_option(team):
    make_refusals(team, 3, start=timezone.now() - timedelta(days=3), step_seconds=1)
    call_command("prune429", "--days", "5")
    assert Refusal.objects.count() == 3
    call_command("prune429", "--days", "1")
    assert Refusal.objects.count() == 0
