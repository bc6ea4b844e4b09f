"""Django's system checks, once: the suite's servers start without them
(tests/servers.py), since each would run the same checks on the same project."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command


def test_the_project_passes_the_system_checks() -> None:
    out = StringIO()
    # Raises SystemCheckError on any error; warnings are printed, and there are none.
    call_command("check", stdout=out, stderr=out)
    assert out.getvalue().strip() == "System check identified no issues (0 silenced)."
