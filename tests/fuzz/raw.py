"""Requests httpx refuses to build: odd header bytes, raw paths, other source addresses.

http.client sends header values as given (trailing spaces, non-ASCII bytes) and paths
unnormalised. A source address other than 127.0.0.1 matters because the team API
throttles failed authentications per client address: the auth fuzzers use their own
loopback addresses so the rest of the run keeps being served.
"""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass

from tests.fuzz.contract import team_problem


@dataclass
class RawResponse:
    status: int
    content_type: str
    body: bytes
    label: str

    def problem(self) -> str | None:
        return team_problem(self.status, self.content_type, self.body)

    def __str__(self) -> str:
        return f"{self.label} -> {self.status} {self.content_type!r} {self.body[:300]!r}"


def raw_request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    body: bytes = b"",
    source: str = "127.0.0.1",
    timeout: float = 30.0,
) -> RawResponse:
    url = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(
        url.hostname, url.port, timeout=timeout, source_address=(source, 0)
    )
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        declared = any(name.lower() == "content-length" for name, _ in headers)
        if not declared and (body or method in ("POST", "PUT", "PATCH")):
            connection.putheader("content-length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return RawResponse(
            response.status,
            response.getheader("content-type", ""),
            response.read(),
            (
                f"{method} {path[:120]} headers={[(n, v[:60]) for n, v in headers]} "
                f"body={body[:120]!r}"
            ),
        )
    finally:
        connection.close()
