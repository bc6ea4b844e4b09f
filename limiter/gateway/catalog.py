"""The models a team may call: Together's list for its account, less other teams'
fine-tuned models (one account lists every team's), cached for a few minutes.

`GET /v1/models` answers from it, an unknown model's 404 names the closest entries,
and another team's model is answered exactly as an unknown one (`model_not_found`).
"""

from __future__ import annotations

import difflib
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async

from limiter.gateway import errors
from limiter.gateway.errors import ApiError
from limiter.gateway.http import Request, Response
from limiter.gateway.keys import KeyInfo
from limiter.jobs.ownership import owned_models, usable
from limiter.protocol.client import spawn
from limiter.upstream import UpstreamError
from limiter.upstream import client as upstream
from limiter.usage.prices import prices
from limiter.usage.services import prices_record

logger = logging.getLogger(__name__)

MODELS_TTL = 300.0

_models: dict[str, tuple[float, list[dict[str, Any]]]] = {}


async def model_list(key: KeyInfo) -> list[dict[str, Any]]:
    """Together's model list for the key's account, cached for a few minutes."""
    cached = _models.get(key.account_id)
    if cached and time.monotonic() - cached[0] < MODELS_TTL:
        return cached[1]
    try:
        outcome = await upstream.send(key.target, "GET", "/models", deadline=time.monotonic() + 15)
    except UpstreamError:
        raise errors.upstream_unreachable() from None
    if outcome.response.status_code != 200:
        raise ApiError(
            502,
            errors.upstream_message(outcome.response.content),
            type=errors.UPSTREAM,
            code="upstream_error",
        )
    data = outcome.response.json()
    # Together answers a bare array; OpenAI's shape wraps it.
    rows = data if isinstance(data, list) else data.get("data", [])
    _models[key.account_id] = (time.monotonic(), rows)
    # Together's prices come with its model list: in force here at once, stored off the path.
    found = prices.observe(rows)
    if found:
        spawn(sync_to_async(prices_record, thread_sensitive=True)(found=found))
    return rows


async def refresh_prices(key: KeyInfo) -> None:
    """Fetch the account's model list again for its prices (a model had none)."""
    _models.pop(key.account_id, None)
    try:
        await model_list(key)
    except ApiError as exc:
        logger.warning("could not refresh model prices: %s", exc.message)


async def visible_rows(key: KeyInfo, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Together's model rows without other teams' fine-tuned models."""
    owners = await owned_models.owners()
    return [
        row
        for row in rows
        if isinstance(row, dict)
        and usable(owners, team_id=key.team_id, name=str(row.get("id", "")))
    ]


async def closest_models(key: KeyInfo, model: str) -> str | None:
    """A hint naming the closest models this key may use, or None if the model does exist."""
    try:
        ids = [row.get("id", "") for row in await visible_rows(key, await model_list(key))]
    except ApiError:
        return ""
    if model in ids:
        return None
    close = difflib.get_close_matches(model, ids, n=3, cutoff=0.3)
    if not close:  # match on the part after the organisation, e.g. "llama-3.3-70b"
        lowered = {i.split("/")[-1].lower(): i for i in ids}
        close = [
            lowered[m]
            for m in difflib.get_close_matches(
                model.split("/")[-1].lower(), lowered, n=3, cutoff=0.3
            )
        ]
    return f" Closest models: {', '.join(close)}." if close else " See GET /v1/models."


async def model_not_found(key: KeyInfo, model: str, *, param: str = "model") -> ApiError:
    """The 404 for a model this key may not use: word for word the one for a model
    Together does not know, so it does not tell that the model exists."""
    hint = await closest_models(key, model)
    return ApiError(
        404,
        errors.MSG_MODEL_NOT_FOUND.format(model=model, hint=hint or " See GET /v1/models."),
        type=errors.NOT_FOUND,
        code="model_not_found",
        param=param,
    )


async def models(request: Request) -> Response:
    """GET /v1/models (and together 3.x's /v2/projects/{id}/models), in OpenAI's shape."""
    assert request.key is not None
    rows = await visible_rows(request.key, await model_list(request.key))
    data = [
        {
            **row,
            "object": "model",
            "id": row.get("id", ""),
            "created": row.get("created", 0),
            "owned_by": row.get("organization") or row.get("owned_by") or "together",
        }
        for row in rows
    ]
    return Response.json({"object": "list", "data": data})
