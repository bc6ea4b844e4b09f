import httpx


def test_server_answers_chat(sluice_server):
    key = sluice_server.issue_key("smoke")
    r = httpx.post(
        f"{sluice_server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={
            "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == 200, r.text
    assert httpx.get(f"{sluice_server.url}/readyz").json()["status"] == "ready"
