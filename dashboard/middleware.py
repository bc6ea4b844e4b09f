"""Every ops API answer is JSON in the ops API's error shape, whatever went wrong.

Ninja's exception handlers (dashboard/api.py) cover what its operations raise; this
covers what happens around them: a path that matches no operation (Django's 404 page),
a method an operation does not take (Ninja's bare 405), a body Django refuses (its 400
page), and an unexpected exception (its 500 page). The team API (/v1/) never reaches
Django; it has its own shape (limiter/gateway/errors.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError

logger = logging.getLogger(__name__)

# Django turns these into 4xx responses itself; __call__ then gives them the JSON shape.
HTTP_EXCEPTIONS = (Http404, PermissionDenied, SuspiciousOperation, BadRequest, MultiPartParserError)

API_PREFIX = "/api/"
CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    500: "internal_error",
}
MSG_INTERNAL = "The ops API failed to handle this request; it was logged."


def _shaped(response: HttpResponse) -> HttpResponse:
    if response.status_code < 400 or response.get("Content-Type", "").startswith(
        "application/json"
    ):
        return response
    code = CODES.get(response.status_code, "error")
    message = response.reason_phrase or code.replace("_", " ")
    shaped = JsonResponse(
        {"error": {"code": code, "message": message, "fields": None}}, status=response.status_code
    )
    if response.has_header("Allow"):
        shaped["Allow"] = response["Allow"]
    return shaped


class OpsApiErrorShape:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        return _shaped(response) if request.path.startswith(API_PREFIX) else response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(API_PREFIX) or isinstance(exception, HTTP_EXCEPTIONS):
            return None
        logger.exception("ops API failed: %s %s", request.method, request.path)
        body = {"error": {"code": "internal_error", "message": MSG_INTERNAL, "fields": None}}
        return HttpResponse(json.dumps(body), status=500, content_type="application/json")
