"""Uploaded files, kept in memory, and the multipart parsing the upload endpoints need."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes | None = None  # None until the redirect flow's PUT arrives

    @property
    def file_type(self) -> str:
        suffix = self.filename.rsplit(".", 1)[-1].lower() if "." in self.filename else ""
        return suffix if suffix in ("jsonl", "csv", "parquet") else "jsonl"

    @property
    def line_count(self) -> int:
        return len([line for line in (self.content or b"").splitlines() if line.strip()])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "filename": self.filename,
            "bytes": len(self.content or b""),
            "purpose": self.purpose,
            "created_at": self.created_at,
            "FileType": self.file_type,
            "LineCount": self.line_count,
            "Processed": self.content is not None,
            "processing_status": "COMPLETED" if self.content is not None else "PENDING",
        }


def new_file_id() -> str:
    return f"file-{uuid.uuid4()}"


@dataclass
class FormPart:
    name: str
    filename: str | None
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> list[FormPart]:
    """Split a multipart/form-data body into parts. Raises ValueError when it is malformed.

    Written by hand rather than with `email` so binary file bytes come back untouched.
    """
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise ValueError("multipart body without a boundary")
    delimiter = b"--" + boundary.encode()
    parts: list[FormPart] = []
    # Everything before the first delimiter is preamble; the last chunk starts with "--".
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without headers")
        headers = _part_headers(head.decode("utf-8", "replace"))
        disposition = headers.get("content-disposition", "")
        parts.append(
            FormPart(
                name=_param(disposition, "name") or "",
                filename=_param(disposition, "filename"),
                data=data.removesuffix(b"\r\n"),
            )
        )
    return parts


def _part_headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _param(header: str, name: str) -> str | None:
    """A `name=value` parameter of a header such as Content-Disposition (quotes removed)."""
    for item in header.split(";")[1:]:
        key, _, value = item.strip().partition("=")
        if key.lower() == name:
            return value.strip().strip('"')
    return None
