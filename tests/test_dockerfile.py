"""The image deploy/docker-compose.yml builds, checked without a container engine (none
runs on these machines): the Dockerfile's COPY steps are performed into a fresh directory,
its install steps (deploy/install.sh, which the Dockerfile runs) in a fresh virtualenv,
then the database is migrated and `manage.py serve` answers from there.

The virtualenv sees the project's installed packages and pip may not reach an index, so
pip resolves pyproject.toml's dependencies and finds them present instead of spending
minutes downloading them. A requirement that cannot be satisfied, a directory the Dockerfile
does not copy, or static files it does not collect fail the test; a dependency missing from
pyproject.toml but installed in the project's virtualenv does not (only a real build shows it).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx

from limiter.gateway import errors
from tests.servers import free_port, stop, wait_for_http

ROOT = Path(__file__).resolve().parent.parent


def copy_steps(dockerfile: Path) -> list[tuple[list[str], str]]:
    """The Dockerfile's `COPY src... dest` steps (no flags, no continuation lines)."""
    steps = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            words = shlex.split(line)
            assert not any(word.startswith("--") for word in words), line
            steps.append((words[1:-1], words[-1]))
    return steps


def perform_copies(app: Path) -> None:
    for sources, dest in copy_steps(ROOT / "Dockerfile"):
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, app / dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target = app / dest / origin.name if dest.endswith("/") else app / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target)


def fresh_venv(path: Path) -> Path:
    """A new virtualenv that also sees the packages installed in the project's, pip among
    them (the image's base has pip; installing a copy with ensurepip cost 3.5 s of CPU)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60
    )
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (Path(purelib) / "project-packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_the_image_install_steps_serve(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    perform_copies(app)
    assert (app / "install.sh").exists(), "the Dockerfile no longer copies deploy/install.sh"
    python = fresh_venv(tmp_path / "venv")
    env = {
        "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        # Never a registry: what pyproject.toml asks for must already be there.
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for phase in ("dependencies", "static"):
        subprocess.run(["sh", "install.sh", phase], cwd=app, env=env, check=True, timeout=120)
    collected = {p.relative_to(app / "staticfiles") for p in (app / "staticfiles").rglob("*")}
    ours = {
        p.relative_to(app / "static")
        for p in (app / "static").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    assert ours and ours <= collected, "collectstatic did not collect static/"

    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SECRET_KEY": "test-" + secrets.token_urlsafe(16),
        "TOGETHER_API_KEY": "",
    }
    subprocess.run(
        [python, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=app,
        env=env,
        check=True,
        timeout=120,
    )
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115  (closed with the process)
    server = subprocess.Popen(
        [python, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=app,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", process=server)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text

        anonymous = httpx.get(f"{url}/v1/models", timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["message"] == errors.MSG_NO_KEY
        assert anonymous.json()["error"]["type"] == errors.AUTHENTICATION
    except BaseException:
        log.flush()
        print((tmp_path / "serve.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        stop(server)
        log.close()
