from typing import Any

from django import template

from dashboard import policy

register = template.Library()


@register.simple_tag(takes_context=True)
def allows(context: dict[str, Any], action: str, team: Any = None) -> bool:
    """`{% allows "team_keys_write" team as can_keys %}`: the policy for this page's user."""
    request = context.get("request")
    return policy.allows(getattr(request, "user", None), action, team)
