"""`manage.py createkey TEAM [--profile NAME]`: issue a key; the secret is the last line."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from limiter.models import LimitProfile
from limiter.services import key_issue, team_get_or_create


class Command(BaseCommand):
    help = (
        "Create the team if needed and issue it a key. "
        "The secret is printed once, alone on the last line."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("team")
        parser.add_argument("--profile", help="the key's limit profile (default: the team's)")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args: Any, team: str, profile: str | None, name: str, **options: Any) -> None:
        chosen = None
        if profile:
            try:
                chosen = LimitProfile.objects.get(name=profile)
            except LimitProfile.DoesNotExist:
                names = ", ".join(LimitProfile.objects.values_list("name", flat=True))
                raise CommandError(
                    f"No limit profile named {profile!r}. Profiles: {names}."
                ) from None
        team_row, created = team_get_or_create(name=team)
        issued = key_issue(team=team_row, name=name, profile=chosen)
        self.stdout.write(
            f"{'Created team' if created else 'Team'} {team_row.name}; key {issued.key.prefix}… "
            f"(profile {(chosen or team_row.profile).name}). The secret is shown once:"
        )
        self.stdout.write(issued.secret)
