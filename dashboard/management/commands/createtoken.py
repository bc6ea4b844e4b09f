"""`manage.py createtoken USERNAME [--read-only] [--name N] [--expires-days D]`: a personal
API token for the ops API, acting with the user's role; the secret is the last line."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dashboard import policy
from dashboard.models import TokenScope
from dashboard.services import token_create

SOURCE = "manage.py createtoken"
MSG_NO_USER = "No user named {username!r}; create one with `manage.py adduser`."
MSG_NO_ROLE = "{username} holds no role: a token would be refused everything. Give a role first."
MSG_DAYS = "--expires-days must be at least 1."


class Command(BaseCommand):
    help = (
        "Create a personal API token for the ops API, acting with the user's role (or reads "
        "only). The token is printed once, alone on the last line."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--read-only", action="store_true", help="reads only, whatever the user's role"
        )
        parser.add_argument("--name", default="", help="a label for the token")
        parser.add_argument("--expires-days", type=int, help="expire after this many days")

    def handle(
        self,
        *args: Any,
        username: str,
        read_only: bool,
        name: str,
        expires_days: int | None,
        **options: Any,
    ) -> None:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(MSG_NO_USER.format(username=username))
        if not policy.allows(user, policy.TOKENS_OWN):
            raise CommandError(MSG_NO_ROLE.format(username=username))
        if expires_days is not None and expires_days < 1:
            raise CommandError(MSG_DAYS)
        issued = token_create(
            user=user,
            name=name[:80],
            scope=TokenScope.READ if read_only else TokenScope.FULL,
            expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
            actor=None,
            actor_name=SOURCE,
        )
        token = issued.token
        expires = (
            f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "no expiry"
        )
        self.stdout.write(
            f"Token {token.prefix}… for {user.get_username()} ({token.get_scope_display()}, "
            f"{expires}). The token is shown once:"
        )
        self.stdout.write(issued.secret)
