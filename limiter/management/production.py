"""Checks the long-running commands make before serving anything."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError

MSG_NO_SECRET_KEY = (
    "SECRET_KEY is not set and DEBUG is off: refusing to start on the built-in development key, "
    "which anyone can read (sessions, and the sandbox upstream's bearer, derive from it). Set "
    "SECRET_KEY in the environment or .env (`make run` writes a random one there), or DEBUG=true "
    "for local development."
)


def refuse_development_secret_key() -> None:
    """`serve` and `runworker` start only with a real SECRET_KEY, unless DEBUG.

    Here rather than in settings: migrate, createkey, the test suite and other one-off
    commands may run on the development key without harm.
    """
    if settings.SLUICE_DEVELOPMENT_SECRET_KEY and not settings.DEBUG:
        raise CommandError(MSG_NO_SECRET_KEY)
