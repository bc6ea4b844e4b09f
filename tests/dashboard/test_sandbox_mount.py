"""The sandbox mounted at /sandbox/ answers only Sluice itself (and, for its control
endpoints, a staff session): every team's uploads sit in it, and its control endpoint
can reconfigure it for everyone."""

from __future__ import annotations

import httpx
import pytest
from together import Together

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


def redirect_upload(server: SluiceServer, key: str, name: str) -> httpx.Response:
    """The SDKs' first step: POST /v1/files with no file part answers 302 to a signed URL."""
    start = httpx.post(
        f"{server.url}/v1/files",
        headers={"authorization": f"Bearer {key}"},
        data={"purpose": "fine-tune", "file_name": name},
        timeout=30,
    )
    assert start.status_code == 302, start.text
    return start


def test_the_upload_url_is_signed_for_its_own_file(
    server: SluiceServer, uploaded: tuple[str, str]
) -> None:
    """The PUT target answers no bearer (the SDKs send none there), so its URL is the
    secret: knowing a file id (another team's) must not be enough to overwrite it."""
    key, file_id = uploaded
    headers = {"authorization": f"Bearer {key}"}
    for url in (
        f"{server.url}{SANDBOX}/sandbox-upload/{file_id}",
        f"{server.url}{SANDBOX}/sandbox-upload/{file_id}?signature=forged",
    ):
        assert_refused(httpx.put(url, content=b'{"prompt": "overwritten"}\n'), 403)
    # The signed URL of an attacker's own upload does not open anyone else's file.
    attacker = redirect_upload(server, server.issue_key("attacker"), "mine.jsonl")
    own_id = attacker.headers["x-together-file-id"]
    other = attacker.headers["location"].replace(own_id, file_id)
    assert_refused(httpx.put(other, content=b'{"prompt": "overwritten"}\n'), 403)

    content = httpx.get(f"{server.url}/v1/files/{file_id}/content", headers=headers, timeout=30)
    assert content.status_code == 200 and content.content == b'{"prompt": "team secret"}\n'


def test_the_sdk_redirect_upload_works_through_sluice(server: SluiceServer) -> None:
    key = server.issue_key("redirect-uploader")
    start = redirect_upload(server, key, "steps.jsonl")
    file_id = start.headers["x-together-file-id"]
    assert start.headers["location"].startswith(f"{server.url}{SANDBOX}/sandbox-upload/{file_id}")
    put = httpx.put(start.headers["location"], content=b'{"text": "a"}\n', timeout=30)
    assert put.status_code == 200, put.text
    headers = {"authorization": f"Bearer {key}"}
    done = httpx.post(f"{server.url}/v1/files/{file_id}/preprocess", headers=headers, timeout=30)
    assert done.status_code == 200 and done.json()["bytes"] == 14
    content = httpx.get(f"{server.url}/v1/files/{file_id}/content", headers=headers, timeout=30)
    assert content.content == b'{"text": "a"}\n'


def test_the_together_sdk_uploads_through_sluice(server: SluiceServer, tmp_path) -> None:
    training = tmp_path / "train.jsonl"
    training.write_text('{"text": "sdk"}\n')
    sdk = Together(api_key=server.issue_key("sdk-uploader"), base_url=server.url)
    uploaded = sdk.files.upload(file=training, purpose="fine-tune", check=False)
    assert sdk.files.content(uploaded.id).read() == b'{"text": "sdk"}\n'
