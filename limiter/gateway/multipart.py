"""A multipart/form-data body read just enough: the text fields a handler asks for, and
each file part's size and first bytes, found in place (the file is not copied). The body
itself is forwarded to Together untouched; this only tells Sluice what the call is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from limiter.gateway import errors
from limiter.gateway.errors import ApiError

MAX_PARTS = 64  # Together's audio forms have about a dozen fields
MAX_FIELD_BYTES = 4096  # a text field read here (model, response_format, a file's URL)
HEAD_BYTES = 4096  # of a file part: enough for a WAV header and its chunk list
MSG_BAD_MULTIPART = "The request body must be multipart/form-data ({problem})."
MSG_FIELD_TOO_LONG = "'{field}' must be at most {limit} bytes."

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_NAME = re.compile(rb'[\s;]name="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb'[\s;]filename="([^"]*)"', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FilePart:
    """A file sent in the form: its size in bytes and its first HEAD_BYTES."""

    size: int
    head: bytes


@dataclass(slots=True)
class Form:
    fields: dict[str, str] = field(default_factory=dict)  # the asked-for text fields
    files: dict[str, FilePart] = field(default_factory=dict)


def _bad(problem: str) -> ApiError:
    return ApiError(400, MSG_BAD_MULTIPART.format(problem=problem), code="invalid_multipart")


def boundary_of(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/form-data"):
        raise _bad("the content type is not multipart/form-data")
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise _bad("the content type names no boundary")
    return (found.group(1) or found.group(2)).encode("latin-1")


def parse(content_type: str, body: bytes, wanted: tuple[str, ...]) -> Form:
    """The form's `wanted` text fields and its files; a 400 for a body that is not one."""
    delimiter = b"--" + boundary_of(content_type)
    form = Form()
    at = body.find(delimiter)
    if at < 0:
        raise _bad("no part starts with its boundary")
    for _ in range(MAX_PARTS + 1):
        at += len(delimiter)
        if body[at : at + 2] == b"--":
            return form  # the closing delimiter
        if body[at : at + 2] != b"\r\n":
            raise _bad("a boundary is not followed by a line end")
        head_end = body.find(b"\r\n\r\n", at + 2)
        end = body.find(b"\r\n" + delimiter, at + 2)
        if head_end < 0 or end < 0 or head_end > end:
            raise _bad("a part is not closed by its boundary")
        _take(form, body[at + 2 : head_end], body, head_end + 4, end, wanted)
        at = end + 2
    raise _bad(f"more than {MAX_PARTS} parts")


def _take(form: Form, headers: bytes, body: bytes, start: int, end: int, wanted: tuple) -> None:
    name_match = _NAME.search(headers)
    if name_match is None:
        raise _bad("a part has no name")
    name = name_match.group(1).decode("latin-1")
    if _FILENAME.search(headers) is not None:
        form.files[name] = FilePart(end - start, body[start : min(end, start + HEAD_BYTES)])
        return
    if name not in wanted:
        return
    if end - start > MAX_FIELD_BYTES:
        raise ApiError(
            400,
            MSG_FIELD_TOO_LONG.format(field=name, limit=MAX_FIELD_BYTES),
            code="invalid_value",
            param=name,
        )
    try:
        value = body[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"the field '{name}' is not UTF-8") from None
    if "\x00" in value:  # stored with the usage and 429 rows: no database stores a NUL
        raise ApiError(400, errors.MSG_TEXT_NOT_STORABLE, code="invalid_value", param=name)
    form.fields[name] = value
