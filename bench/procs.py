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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]  # the repository: bench/ sits at its top
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process(Protocol):
    """What the benchmark uses of a process it started (all of it `subprocess.Popen`'s)."""

    args: Any
    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class PythonStarter(Protocol):
    """Another way to start `python manage.py ...` and `python -m ...` than a fresh
    interpreter each: the benchmark's tests fork them from a warm Python
    (tests/bench/conftest.py), where each would import Django and the project's libraries
    again. Not the benchmark's own: a server forked from another process is not the one it
    measures."""

    def spawn(self, args: list[str], env: dict[str, str], log: Path) -> Process:
        """Start it as `spawn` below does: a session of its own, its output into `log`."""
        ...

    def run(self, args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
        """Run it to the end: its exit code, stdout and stderr."""
        ...


# The starter that spawn and run_python use inside `python_started_by()`; none outside it.
_starters: list[PythonStarter] = []


@contextmanager
def python_started_by(starter: PythonStarter) -> Iterator[None]:
    """Within it, the Python processes of `spawn` and `run_python` are started by `starter`."""
    _starters.append(starter)
    try:
        yield
    finally:
        _starters.pop()


def spawn(args: list[str], env: dict[str, str], log: Path) -> Process:
    """Start `args` in a new session, so stopping it can take its children too."""
    if _starters and args[0] == PYTHON:
        return _starters[-1].spawn(args, env, log)
    output = open(log, "ab")  # noqa: SIM115  (the child keeps the descriptor)
    try:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        output.close()


def run_python(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run `python *args` in the repository to its end: its exit code, stdout and stderr."""
    command = [PYTHON, *args]
    if _starters:
        return _starters[-1].run(command, env, timeout)
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout, done.stderr


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run a `manage.py` command to its end; its stdout."""
    code, stdout, stderr = run_python(["manage.py", *args], env, timeout)
    if code:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{stdout}\n{stderr}")
    return stdout


def wait_for_http(url: str, process: Process, timeout: float = 60.0) -> None:
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


def stop(process: Process, timeout: float = 10.0) -> None:
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


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes and their live descendants, plus what their
    reaped children used (cutime + cstime)."""
    # One walk of /proc for all of them: a walk reads every process's stat on the machine.
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    ticks = 0
    for root in pids:
        todo = [root]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            if fields := stats.get(pid):
                # After the name: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
                ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / CLOCK_TICKS


# --- the load generator ------------------------------------------------------------------------
class LoadGenerator:
    """A `python -m bench.loadgen` child, which runs load plans one after another until its
    stdin closes: each plan its own session, connections, warm-up and result, as in a child
    of its own, but aiohttp and the loop imported once (about 0.3 s of CPU a child)."""

    def __init__(self) -> None:
        self.child = subprocess.Popen(
            [PYTHON, "-m", "bench.loadgen"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.child.poll() is None

    def run(
        self,
        plan: dict[str, Any],
        around: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One plan; a failure stops the child, whose state is then unknown."""
        stdin, stdout = self.child.stdin, self.child.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(plan) + "\n")
            stdin.flush()
            if not stdout.readline():
                raise RuntimeError(
                    f"load generator exited with {self.child.wait()} before its warm-up ended"
                )
            if around:
                around()
            stdin.write("go\n")
            stdin.flush()
            line = stdout.readline()
            if after:
                after()
            if not line:
                raise RuntimeError(
                    f"load generator exited with {self.child.wait()} without a result"
                )
            return json.loads(line)
        except BaseException:
            stop(self.child)
            raise

    def close(self) -> None:
        """Close its stdin (its loop ends there), and stop it if it lingers."""
        try:
            if self.child.stdin is not None:
                self.child.stdin.close()
            self.child.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            stop(self.child)


# The generator that run_load reuses inside `reused_load_generator()`; none outside it.
_reused: list[LoadGenerator | None] = []


@contextmanager
def reused_load_generator() -> Iterator[None]:
    """Within it, run_load runs every plan in one child (started at the first plan, and
    again after a failure), stopped on the way out."""
    _reused.append(None)
    try:
        yield
    finally:
        generator = _reused.pop()
        if generator is not None:
            generator.close()


def run_load(
    plan: dict[str, Any],
    around: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one load plan in a load generator child (a child of its own, or the one reused
    inside `reused_load_generator()`); `around` is called just before the measured phase
    starts (after the warm-up) and `after` as soon as it ends."""
    if not _reused:
        generator = LoadGenerator()
        try:
            return generator.run(plan, around, after)
        finally:
            generator.close()
    reused = _reused[-1]
    if reused is None or not reused.alive:
        reused = _reused[-1] = LoadGenerator()
    return reused.run(plan, around, after)
