"""Deployment edges over real HTTP: the session and CSRF cookies carry Secure when
SLUICE_HTTPS=1 (behind a TLS-terminating proxy), and every request line under /v1 is
answered by the team API in OpenAI's shape, `//v1/...` and the absolute form
(`GET http://host/v1/models HTTP/1.1`) included, under daphne and uvicorn alike."""

from __future__ import annotations

import json
import socket
from http.cookies import SimpleCookie

import httpx
import pytest

from tests.servers import SluiceServer


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    env = {"SLUICE_SERVER": request.param, "SLUICE_HTTPS": "1"}
    with SluiceServer(tmp_path_factory.mktemp(request.param), env=env) as sluice:
        yield sluice


def set_cookies(response: httpx.Response) -> dict[str, dict]:
    cookies: dict[str, dict] = {}
    for header in response.headers.get_list("set-cookie"):
        parsed = SimpleCookie(header)
        for name, morsel in parsed.items():
            cookies[name] = {"value": morsel.value, "secure": bool(morsel["secure"])}
    return cookies


def test_cookies_are_secure_behind_https(server: SluiceServer) -> None:
    origin = server.url.replace("http://", "https://")
    proxied = {"x-forwarded-proto": "https"}  # what the TLS-terminating proxy says
    form = httpx.get(f"{server.url}/login/", headers=proxied)
    csrf = set_cookies(form)["csrftoken"]
    assert csrf["secure"]
    login = httpx.post(
        f"{server.url}/login/",
        headers={**proxied, "origin": origin, "referer": f"{origin}/login/"},
        cookies={"csrftoken": csrf["value"]},
        data={
            "username": server.admin_username,
            "password": server.admin_password,
            "csrfmiddlewaretoken": csrf["value"],
        },
    )
    assert login.status_code == 302, login.text
    assert set_cookies(login)["sessionid"]["secure"]


def raw(server: SluiceServer, request_line: str) -> tuple[int, str, bytes]:
    host = server.url.removeprefix("http://")
    with socket.create_connection(("127.0.0.1", server.ports[0]), timeout=10) as sock:
        sock.sendall(f"{request_line}\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return int(lines[0].split()[1]), content_type, body


@pytest.mark.parametrize(
    "target",
    ["//v1/models", "//v1/chat/completions", "///v1/nothing-here", "http://{host}/v1/nothing"],
)
def test_request_lines_under_v1_are_answered_in_openais_shape(
    server: SluiceServer, target: str
) -> None:
    target = target.format(host=server.url.removeprefix("http://"))
    status, content_type, body = raw(server, f"GET {target} HTTP/1.1")
    assert content_type.startswith("application/json"), (status, body[:200])
    assert status in (401, 404, 405), (status, body[:200])
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_the_absolute_form_is_the_same_call(server: SluiceServer) -> None:
    # RFC 9112 3.2.2: a server accepts the absolute form; its path is the target.
    host = server.url.removeprefix("http://")
    status, content_type, body = raw(server, f"GET http://{host}/v1/models HTTP/1.1")
    assert (status, json.loads(body)["error"]["code"]) == (401, "missing_api_key")
    status, _, _ = raw(server, f"GET http://{host}/healthz HTTP/1.1")
    assert status == 200
