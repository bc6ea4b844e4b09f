"""Delete 429 records older than the retention (SLUICE_REFUSAL_RETENTION_DAYS)."""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from dashboard.services import refusal_prune


class Command(BaseCommand):
    help = (
        "Delete 429 records older than --days (default: SLUICE_REFUSAL_RETENTION_DAYS), in batches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=settings.SLUICE_REFUSAL_RETENTION_DAYS)
        parser.add_argument("--batch-size", type=int, default=10_000)

    def handle(self, *args, days: int, batch_size: int, **options) -> None:
        cutoff = timezone.now() - timedelta(days=days)
        deleted = refusal_prune(older_than=cutoff, batch_size=batch_size)
        self.stdout.write(
            f"Deleted {deleted} refusals older than {days} days "
            f"(before {cutoff:%Y-%m-%d %H:%M} UTC)."
        )
