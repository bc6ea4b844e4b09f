"""The usage row of a forwarded call that is no inference: a file's content, a fine-tune's
price, preview or checkpoints, an evaluation. One request a row, no tokens (Together
bills none for them; what an evaluation's inference costs is billed on its own), under
the route's endpoint kind, so a team's usage page shows the calls it made. Recorded
only when Together answered: a call Sluice refused itself (another team's id, a bad
body) never reached it."""

from __future__ import annotations

from limiter.gateway.http import Request
from limiter.gateway.metering import enabled
from limiter.usage.recorder import usage_recorder


def record_call(
    request: Request, endpoint: str, status: int, *, model: str = "", units: int = 0
) -> None:
    """One row for the call; `units` are what it is billed by where its kind is priced by
    the unit (a code interpreter session it started: limiter/usage/pricing.py)."""
    key = request.key
    if key is None or not enabled():
        return
    usage_recorder.record(
        team_id=key.team_id,
        team_name=key.team_name,
        key_prefix=key.prefix,
        upstream=key.account_name,
        endpoint=endpoint,
        model=model,
        status=status,
        prompt=0,
        completion=0,
        total=0,
        units=units,
    )
