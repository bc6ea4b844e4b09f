"""The classes tests/settings.py names (apart, so that the settings module imports no
Django machinery while it is being read)."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings as django_settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from whitenoise.middleware import WhiteNoiseMiddleware


class FewIterationsPBKDF2(PBKDF2PasswordHasher):
    """Production's algorithm and hash format, with fewer iterations."""

    iterations = 1_000


class WhiteNoiseScannedOnce(WhiteNoiseMiddleware):
    """WhiteNoise's middleware, its scan of the static files made once per process (per
    set of settings that decide it) rather than once per middleware chain."""

    _scans: ClassVar[dict[tuple[Any, ...], dict[str, Any]]] = {}

    def __init__(self, get_response: Any = None, settings: Any = django_settings) -> None:
        self._scan_key = (
            str(settings.STATIC_ROOT),
            settings.STATIC_URL,
            tuple(str(d) for d in getattr(settings, "STATICFILES_DIRS", ())),
            getattr(settings, "WHITENOISE_USE_FINDERS", settings.DEBUG),
            getattr(settings, "WHITENOISE_AUTOREFRESH", settings.DEBUG),
            getattr(settings, "WHITENOISE_MAX_AGE", None),
            settings.DEBUG,
        )
        self._scanned = self._scans.get(self._scan_key)
        super().__init__(get_response, settings)
        if self._scanned is None and not self.autorefresh:
            self._scans[self._scan_key] = self.files
        elif self._scanned is not None:
            self.files = dict(self._scanned)

    def add_files(self, root: Any, prefix: Any = None) -> None:
        if self._scanned is None:
            super().add_files(root, prefix)

    def add_files_from_finders(self) -> None:
        if self._scanned is None:
            super().add_files_from_finders()
