from typing import Any

from django.conf import settings
from django.http import HttpRequest

from dashboard import policy


class Can:
    """`{% if can.limits_write %}` in a template: the policy, asked for the signed-in
    user, so a page renders no control its user may not use. Per-team actions are the
    `{% allows %}` tag's (dashboard/templatetags/policy_tags.py)."""

    def __init__(self, user: Any) -> None:
        self.user = user

    def __getitem__(self, action: str) -> bool:
        if action not in policy.ACTIONS:
            raise KeyError(action)  # a typo in a template shows, instead of hiding a control
        return policy.allows(self.user, action)


def sluice(request: HttpRequest) -> dict[str, Any]:
    """Every page says when the sandbox upstream is in use (a simulated Together), and
    what its user may do."""
    return {
        "sluice_sandbox": settings.SLUICE_SANDBOX,
        "can": Can(request.user),
        # Called only by a page that shows it (a team user's navigation).
        "my_teams": lambda: policy.teams_visible(request.user),
    }
