"""`manage.py adduser USERNAME --role admin|operator|auditor` or `--team TEAM
--team-role viewer|maintainer`: give a user a role, creating the user (with a generated
password, printed once) if needed. Repeatable: each run adds the role named; a second
organisation role replaces the first. Every grant is audited (dashboard/roles.py)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from dashboard.roles import ORG_ROLES, TEAM_ROLES, role_grant
from limiter.models import Team

SOURCE = "adduser"

MSG_NOTHING = "Name a role: --role admin|operator|auditor, or --team TEAM --team-role ROLE."
MSG_TEAM_ROLE = "--team and --team-role go together."
MSG_NO_TEAM = "No team named '{team}' (create it in the dashboard or with createkey)."


class Command(BaseCommand):
    help = "Give a user an organisation role or a role on a team (creating the user if needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=ORG_ROLES)
        parser.add_argument("--team")
        parser.add_argument("--team-role", dest="team_role", choices=TEAM_ROLES)

    def handle(
        self,
        *args: Any,
        username: str,
        role: str | None,
        team: str | None,
        team_role: str | None,
        **options: Any,
    ) -> None:
        if role is None and team is None and team_role is None:
            raise CommandError(MSG_NOTHING)
        if (team is None) != (team_role is None):
            raise CommandError(MSG_TEAM_ROLE)
        team_obj = None
        if team is not None:
            team_obj = Team.objects.filter(name=team).first()
            if team_obj is None:
                raise CommandError(MSG_NO_TEAM.format(team=team))
        with transaction.atomic():
            user, created = User.objects.get_or_create(username=username)
            password = None
            if created:
                password = secrets.token_urlsafe(12)
                user.set_password(password)
                user.save(update_fields=["password"])
            if role is not None:
                role_grant(user=user, role=role, actor=None, source=SOURCE)
            if team_obj is not None and team_role is not None:
                role_grant(user=user, role=team_role, team=team_obj, actor=None, source=SOURCE)
        if password is not None:
            self.stdout.write(f"Created user '{username}'. Password (shown once): {password}")
        granted = [f"{role} of the organisation"] if role else []
        if team_obj is not None:
            granted.append(f"{team_role} of team '{team_obj.name}'")
        self.stdout.write(f"'{username}' is {' and '.join(granted)}.")
