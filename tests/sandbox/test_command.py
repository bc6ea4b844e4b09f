"""`manage.py sandbox` serves over daphne and announces its address once listening."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_command_serves_with_daphne_on_a_free_port() -> None:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sandbox", "--port", "0", "--api-key", "only-this"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("Sandbox upstream listening on http://127.0.0.1:")
        v1_url = line.rsplit(" ", 1)[1]
        assert v1_url.endswith("/v1")
        wrong = httpx.get(f"{v1_url}/models", headers={"Authorization": "Bearer other"}, timeout=5)
        right = httpx.get(
            f"{v1_url}/models", headers={"Authorization": "Bearer only-this"}, timeout=5
        )
        assert (wrong.status_code, right.status_code) == (401, 200)
        assert right.headers["server"] == "daphne"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_command_plays_a_new_organisation_when_asked() -> None:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sandbox", "--port", "0", "--new-organisation"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        v1_url = process.stdout.readline().strip().rsplit(" ", 1)[1]
        answer = httpx.post(
            f"{v1_url}/embeddings",
            json={"model": "BAAI/bge-base-en-v1.5", "input": "hi"},
            headers={"Authorization": "Bearer k"},
            timeout=5,
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-ratelimit-limit"] == "5"  # the seed's 300 a minute
    finally:
        process.terminate()
        process.communicate(timeout=10)
