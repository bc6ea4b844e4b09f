"""Read queries of the dashboard: the audit log, and warnings about limits."""

from __future__ import annotations

from dataclasses import dataclass

from dashboard.models import AuditEntry
from limiter import selectors
from limiter.models import EndpointLimit
from limiter.selectors import PAGE_SIZE, keyset_page

MSG_ABOVE_CEILING = (
    "{field} {value} is above the upstream ceiling of {ceiling} for {endpoint} "
    "(profile '{profile}'): the account's limit will bind first."
)


@dataclass
class AuditPage:
    rows: list[AuditEntry]
    next_cursor: str | None


def audit_page(
    *, after: str = "", object_type: str = "", object_id: str = "", size: int = PAGE_SIZE
) -> AuditPage:
    """Newest first, keyset-paginated like the 429 history (the log only grows)."""
    qs = AuditEntry.objects.order_by("-created_at", "-id")
    if object_type:
        qs = qs.filter(object_type=object_type)
    if object_id:
        qs = qs.filter(object_id=object_id)
    rows, next_cursor = keyset_page(qs, after=after, size=size)
    return AuditPage(rows=rows, next_cursor=next_cursor)


def limit_warnings(
    *, limit: EndpointLimit, ceilings: dict[str, EndpointLimit] | None = None
) -> list[str]:
    """Why a limit is above its upstream ceiling: allowed, but the ops user should know.

    A page listing many limits of one profile passes `ceilings` (from
    `ceilings_for_profile`) so they are computed once, not once per row.
    """
    if ceilings is None:
        ceilings = selectors.ceilings_for_profile(profile=limit.profile)
    ceiling = ceilings.get(limit.endpoint)
    if ceiling is None:
        return []
    warnings = []
    for field, label in (("requests_per_minute", "Limit"), ("burst", "Burst")):
        value, top = getattr(limit, field), getattr(ceiling, field)
        if value > top:
            warnings.append(
                MSG_ABOVE_CEILING.format(
                    field=label,
                    value=value,
                    ceiling=top,
                    endpoint=limit.endpoint,
                    profile=ceiling.profile.name,
                )
            )
    return warnings
