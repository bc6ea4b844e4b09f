"""The floor's one view: the least a Django async proxy can do."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import httpx
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8100/v1") + "/chat/completions"
# One shared client with httpx's default transport, as the floor prescribes.
client = httpx.AsyncClient(timeout=60.0)


def _forwarded_headers(request: HttpRequest) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "authorization": request.headers.get("authorization", ""),
    }


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    headers = _forwarded_headers(request)
    if not json.loads(request.body or b"{}").get("stream"):
        upstream = await client.post(UPSTREAM, content=request.body, headers=headers)
        return HttpResponse(
            upstream.content,
            status=upstream.status_code,
            content_type=upstream.headers.get("content-type"),
        )
    upstream = await client.send(
        client.build_request("POST", UPSTREAM, content=request.body, headers=headers), stream=True
    )

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingHttpResponse(
        chunks(), status=upstream.status_code, content_type=upstream.headers.get("content-type")
    )
