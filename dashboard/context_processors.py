from typing import Any

from django.conf import settings
from django.http import HttpRequest


def sluice(request: HttpRequest) -> dict[str, Any]:
    """Every page says when the sandbox upstream is in use (a simulated Together)."""
    return {"sluice_sandbox": settings.SLUICE_SANDBOX}
