"""The settings the tests run on, in process and in the servers they start
(tests/servers.py): the project's (dashboard/settings.py), with two costs only a test
suite pays cut at their cause. What a request does is the same.

- Password hashing: PBKDF2-SHA256 as in production, with 1,000 iterations instead of
  Django's 1,000,000. Each hash cost about half a second of CPU: hundreds of tests create
  a user with a password, and every sign-in to a test server (a browser test's, the
  throttle's guesses, whose failures hash too) checked one. A hash made here is a valid
  `pbkdf2_sha256$1000$...` that the production hasher also checks.
- WhiteNoise scans the static directories (some 300 files) each time a middleware chain
  is built, and Django's test `Client` builds one per client: half the CPU of a dashboard
  test. The scan is kept, made once per process; the files served and their headers are
  unchanged.

Tests of what dashboard.settings itself decides (the secret key, the listening checks,
the single sign-on configuration) start their commands on it.
"""

from __future__ import annotations

import os

from dashboard.settings import *  # noqa: F403
from dashboard.settings import MIDDLEWARE as _PROJECT_MIDDLEWARE

PASSWORD_HASHERS = ["tests.settings_parts.FewIterationsPBKDF2"]
MIDDLEWARE = [
    "tests.settings_parts.WhiteNoiseScannedOnce"
    if name == "whitenoise.middleware.WhiteNoiseMiddleware"
    else name
    for name in _PROJECT_MIDDLEWARE
]

# The limiter's dedicated-endpoint poll is off in tests unless a test's server asks for it
# (env SLUICE_DEDICATED_POLL_SECONDS): tests that count the sandbox's requests see none.
SLUICE_DEDICATED_POLL_SECONDS = float(os.environ.get("SLUICE_DEDICATED_POLL_SECONDS", "0"))
