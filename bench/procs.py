"""Processes: start in their own process group, wait until they answer, stop the whole
group, and read their CPU time from /proc."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the repository: bench/ sits at its top
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `args` in a new session, so stopping it can take its children too."""
    output = open(log, "ab")  # noqa: SIM115  (the child keeps the descriptor)
    try:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        output.close()


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Any HTTP answer (even 404) means the server is listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # spawn() passes a list, whose repr is its str; typeshed also allows bytes here.
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before listening"
            )
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        pass


def http_json(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# --- CPU accounting -------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    return text[text.rindex(")") + 2 :].split()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes and their live descendants, plus what their
    reaped children used (cutime + cstime)."""
    ticks = 0
    for root in pids:
        for pid in _descendants(root):
            fields = _stat(pid)
            if fields:
                # After the name: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
                ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / CLOCK_TICKS


# --- the load generator ------------------------------------------------------------------------
def run_load(
    plan: dict[str, Any],
    around: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one load plan in a child process; `around` is called just before the measured
    phase starts (after the warm-up) and `after` as soon as it ends."""
    child = subprocess.Popen(
        [PYTHON, "-m", "bench.loadgen"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(plan) + "\n")
        child.stdin.flush()
        ready = child.stdout.readline()
        if not ready:
            raise RuntimeError(
                f"load generator exited with {child.wait()} before its warm-up ended"
            )
        if around:
            around()
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        if after:
            after()
        if not line:
            raise RuntimeError(f"load generator exited with {child.wait()} without a result")
        child.wait(30)
        return json.loads(line)
    finally:
        stop(child)
