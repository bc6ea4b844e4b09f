"""The sandbox mounted at /sandbox/ answers only Sluice itself (and, for its control
endpoints, a staff session): every team's uploads sit in it, and its control endpoint
can reconfigure it for everyone."""

from __future__ import annotations

import httpx
import pytest

from tests.servers import SluiceServer

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
SANDBOX = "/sandbox"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    # No TOGETHER_BASE_URL: `serve` points Sluice at the sandbox mounted on itself.
    with SluiceServer(tmp_path_factory.mktemp("mounted"), env={"TOGETHER_BASE_URL": ""}) as sluice:
        yield sluice


def login(server: SluiceServer, username: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=30)
    client.get("/login/")
    response = client.post(
        "/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )
    assert response.status_code == 302, response.text
    assert "sessionid" in client.cookies
    return client


@pytest.fixture(scope="module")
def staff(server: SluiceServer):
    client = login(server, server.admin_username, server.admin_password)
    yield client
    client.close()


@pytest.fixture(scope="module")
def uploaded(server: SluiceServer) -> tuple[str, str]:
    """A key, and a file its team uploaded through Sluice into the mounted sandbox."""
    key = server.issue_key("uploader")
    response = httpx.post(
        f"{server.url}/v1/files",
        headers={"authorization": f"Bearer {key}"},
        data={"purpose": "fine-tune"},
        files={"file": ("secret.jsonl", b'{"prompt": "team secret"}\n')},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return key, response.json()["id"]


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json()
    assert b"team secret" not in response.content


def test_sluice_itself_reaches_the_mounted_sandbox(
    server: SluiceServer, uploaded: tuple[str, str]
) -> None:
    key, file_id = uploaded
    headers = {"authorization": f"Bearer {key}"}
    chat = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=headers,
        timeout=30,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 200, chat.text
    content = httpx.get(f"{server.url}/v1/files/{file_id}/content", headers=headers, timeout=30)
    assert content.status_code == 200 and b"team secret" in content.content


@pytest.mark.parametrize(
    "authorization", [None, "Bearer anything", "Bearer sandbox", "Bearer sk-sluice-x"]
)
def test_the_mounted_api_refuses_everyone_else(
    server: SluiceServer, uploaded: tuple[str, str], authorization: str | None
) -> None:
    _, file_id = uploaded
    headers = {"authorization": authorization} if authorization else {}
    for path in ("/v1/files", f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert_refused(httpx.get(f"{server.url}{SANDBOX}{path}", headers=headers), 401)


def test_a_team_key_does_not_open_the_mounted_sandbox(
    server: SluiceServer, uploaded: tuple[str, str]
) -> None:
    key, file_id = uploaded
    response = httpx.get(
        f"{server.url}{SANDBOX}/v1/files/{file_id}/content",
        headers={"authorization": f"Bearer {key}"},
    )
    assert_refused(response, 401)


def test_control_refuses_anonymous_callers(server: SluiceServer, staff: httpx.Client) -> None:
    for method, path, body in [
        ("POST", "/sandbox/control", {"latency_ms": 5000}),
        ("GET", "/sandbox/config", None),
        ("GET", "/sandbox/stats", None),
    ]:
        assert_refused(
            httpx.request(
                method,
                f"{server.url}{SANDBOX}{path}",
                json=body,
                headers={"authorization": "Bearer anything"},
            ),
            401,
        )
    assert staff.get(f"{SANDBOX}/sandbox/config").json()["latency_ms"] == 0


def test_control_refuses_a_non_staff_session(server: SluiceServer) -> None:
    server.python(
        "from django.contrib.auth import get_user_model;"
        "get_user_model().objects.create_user('dev', password='dev-password-123')"
    )
    dev = login(server, "dev", "dev-password-123")
    assert_refused(dev.post(f"{SANDBOX}/sandbox/control", json={"latency_ms": 5000}), 403)
    dev.close()


def test_control_answers_a_staff_session(server: SluiceServer, staff: httpx.Client) -> None:
    response = staff.post(f"{SANDBOX}/sandbox/control", json={"stream_chunk_delay_ms": 1})
    assert response.status_code == 200, response.text
    assert staff.get(f"{SANDBOX}/sandbox/config").json()["stream_chunk_delay_ms"] == 1
    assert staff.get(f"{SANDBOX}/sandbox/stats").status_code == 200
    staff.post(f"{SANDBOX}/sandbox/control", json={"stream_chunk_delay_ms": 0})


def test_control_refuses_a_staff_session_from_another_origin(
    server: SluiceServer, staff: httpx.Client
) -> None:
    # A page elsewhere that the staff member visits must not drive the sandbox with their cookie.
    response = staff.post(
        f"{SANDBOX}/sandbox/control",
        json={"latency_ms": 5000},
        headers={"origin": "http://evil.example"},
    )
    assert_refused(response, 403)
    assert staff.get(f"{SANDBOX}/sandbox/config").json()["latency_ms"] == 0


def test_the_generated_image_stays_public(server: SluiceServer) -> None:
    # Image generations answer with this URL; whoever got the answer may fetch it.
    response = httpx.get(f"{server.url}{SANDBOX}/sandbox/image.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
