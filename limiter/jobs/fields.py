"""What the fields of a job body mean to Sluice: which name a file, which hold secrets,
and what a Together id looks like.

Together adds fields over time, so both rules go by the field's name, not by a list:
any top-level `*_file` / `*_file_id` names a file, any `*_api_key` / `*_token` /
`*_secret` is another service's credential.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

# Together's ids: `file-<uuid>`, `ft-<uuid>`, bare uuids for batches. Anything else
# (slashes, dots, percent signs) is not an id and must never reach an upstream path.
UPSTREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
FILE_FIELD = re.compile(r".+_file(_id)?")
SECRET_FIELD = re.compile(r"(.+_)?(api_key|token|secret)", re.IGNORECASE)
REDACTED = "[redacted]"


def is_upstream_id(value: object) -> bool:
    return isinstance(value, str) and UPSTREAM_ID.fullmatch(value) is not None


def path_segment(value: str) -> str:
    """An id as one path segment: escaped, so it can never add or climb a segment."""
    return quote(value, safe="")


def file_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields of a job body that name a file, and what they name.

    Absent, null and empty fields name none: the together SDK sends
    `validation_file: ""` when there is no validation file.
    """
    return {
        name: value
        for name, value in body.items()
        if FILE_FIELD.fullmatch(name) and value not in (None, "")
    }


def is_secret_field(name: str) -> bool:
    return SECRET_FIELD.fullmatch(name) is not None


def redacted(data: Any) -> Any:
    """`data` with every secret field's value replaced by a marker (at any depth)."""
    if isinstance(data, dict):
        return {
            name: REDACTED
            if is_secret_field(str(name)) and value not in (None, "")
            else redacted(value)
            for name, value in data.items()
        }
    if isinstance(data, list):
        return [redacted(item) for item in data]
    return data


def without_secrets(data: Any) -> Any:
    """`data` without its secret fields (at any depth): what a team is shown."""
    if isinstance(data, dict):
        return {
            name: without_secrets(value)
            for name, value in data.items()
            if not is_secret_field(str(name))
        }
    if isinstance(data, list):
        return [without_secrets(item) for item in data]
    return data
