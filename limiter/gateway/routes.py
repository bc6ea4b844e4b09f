"""The team API's route table: (method, path pattern, endpoint kind, handler).

The endpoint kind names the limits that apply: inference handlers take their own
grant (`inference.SELF_LIMITED`); other kinds are admitted by the app around the
handler; "" is not rate limited (reads of a team's own jobs come from the database).
Literal paths come before `{id}` ones: the router takes the first match.
"""

from __future__ import annotations

from collections.abc import Callable

from limiter.gateway import audio, catalog, forwarded, inference, jobs, tci, videos
from limiter.gateway.http import Handler, Request
from limiter.gateway.org import org_routes

Route = tuple[str, str, str, Handler]


def build_routes() -> list[Route]:
    routes: list[Route] = [
        ("POST", "/v1/chat/completions", "chat", inference.chat_completions),
        ("POST", "/v1/completions", "completions", inference.completions),
        ("POST", "/v1/embeddings", "embeddings", inference.embeddings),
        ("POST", "/v1/images/generations", "images", inference.images),
        ("POST", "/v1/rerank", "rerank", inference.rerank),
        ("POST", "/v1/audio/speech", audio.SPEECH, audio.speech),
        ("POST", "/v1/audio/transcriptions", audio.TRANSCRIPTION, audio.transcriptions),
        ("POST", "/v1/audio/translations", audio.TRANSCRIPTION, audio.translations),
        ("GET", "/v1/voices", "", audio.voices),
        ("GET", "/v1/models", "", catalog.models),
        # The together SDK 3.x lists models per project; answer with the same list.
        ("GET", "/v2/projects/{project_id}/models", "", catalog.models),
    ]
    # The fine-tune extras before the jobs' routes: `/v1/fine-tunes/preview` is literal.
    # Organisation-level routes last: GET /v1/models stays the catalogue's.
    return routes + forwarded.ROUTES + jobs.ROUTES + videos.ROUTES + tci.ROUTES + org_routes()


# Routes whose body is checked by the router before admission: a body that fails is
# answered 400 at once, without spending the key's request rate or queueing for it.
CHECKED_FIRST: dict[Handler, Callable[[Request], object]] = {
    **jobs.CHECKED_FIRST,
    **forwarded.CHECKED_FIRST,
    **videos.CHECKED_FIRST,
    **tci.CHECKED_FIRST,
}

# Routes that can cost nothing (lists): paced by their kind's rate, never refused by a
# budget (CallContext.spends).
SPENDS_NOTHING: frozenset[Handler] = tci.SPENDS_NOTHING
