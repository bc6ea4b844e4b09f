"""`manage.py bootstrap`: first-run set-up for `make run`: an admin login, printed once.
The break-glass admin: a superuser in the `admin` group (dashboard/roles.py)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the 'admin' login on first run and print its password (once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(
                f"Admin login '{username}' exists (password as printed on first run)."
            )
            return
        # The dashboard owns the roles; the import waits until a login is to be made.
        from dashboard.roles import role_grant

        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password)
        role_grant(user=user, role="admin", actor=None, source="bootstrap")
        self.stdout.write(f"Created the admin login. Username: {username}  Password: {password}")
