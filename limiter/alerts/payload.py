"""What a webhook receives, and how a webhook's URL is shown.

The body is Slack-compatible (Slack's incoming webhooks read `text` and the legacy
`attachments` fields; other receivers get the same data, structured, under `sluice`).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from limiter.alerts.models import Alert

COLOURS = {"test": "#439fe0", "budget_soft": "#c08a00"}
DEFAULT_COLOUR = "#c0392b"


def alert_payload(alert: Alert) -> dict[str, Any]:
    kind = alert.condition.split(":", 1)[0]
    team = alert.team.name if alert.team else ""
    fields: dict[str, Any] = {
        "condition": kind,
        "period": alert.period_key,
        **({"team": team} if team else {}),
        **alert.fields,
    }
    return {
        "text": f"[Sluice] {alert.text}",
        "attachments": [
            {
                "color": COLOURS.get(kind, DEFAULT_COLOUR),
                "fields": [
                    {"title": name, "value": str(value), "short": True}
                    for name, value in fields.items()
                ],
                "ts": int(alert.created_at.timestamp()),
            }
        ],
        "sluice": {
            "alert_id": alert.pk,
            "condition": alert.condition,
            "period_key": alert.period_key,
            "team": team or None,
            "created_at": alert.created_at.isoformat(),
            "fields": alert.fields,
        },
    }


def redact_url(url: str) -> str:
    """The URL as staff see it: scheme and host only. Webhook URLs carry their secret in
    the path (Slack's) or the query, sometimes in user:password@ too."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    hidden = "/…" if (parts.path not in ("", "/") or parts.query or parts.username) else "/"
    return f"{parts.scheme}://{host}{port}{hidden}"


def scrub(text: str, url: str) -> str:
    """`text` (an error message) without the URL or its secret parts."""
    parts = urllib.parse.urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.netloc):
        if secret and secret not in ("/",):
            text = text.replace(secret, "…")
    return text
