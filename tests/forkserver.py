"""The test servers' and shells' `manage.py` processes, forked from a warm Python.

The suite starts some 150 `manage.py serve`, `runworker` and `shell` processes. Each spent
1.4 s of CPU starting, 0.85 s of it importing third-party libraries (Django's own modules,
Twisted, Autobahn, redis, cryptography, pydantic, httpx...). A fork server, one per test
process, imports those once; each process is then a fork of it that runs `manage.py` with
its own argv, environment, working directory and standard streams, as `python manage.py`
would, settings and the project's modules imported afresh in the child. Only libraries
that read neither Django's settings nor the environment when imported are imported ahead.

What was imported ahead is frozen out of the garbage collector's walks (`gc.freeze()`,
as Python's documentation advises before forking): each child's collections, and the
full one a server runs once it has started (limiter/serving.py `settle_heap`), then walk
only what the child built. A test server's start took 0.46 to 0.55 s of CPU before, 0.35
to 0.44 s after (four starts each way).

The benchmark's tests start its processes the same way (tests/bench/conftest.py), its
`python -m` ones (the load floors, the decisions measurement) too.

`spawn()` answers a `ForkedProcess`, which has the part of `subprocess.Popen` the tests
use (pid, poll, wait, send_signal, terminate, kill, returncode, the pipes). The fork
server, whose children they are, reaps them and tells their exit codes. A process whose
PYTHONPATH differs from the fork server's cannot be a fork of it (the path, and a
`sitecustomize` on it, are read as the interpreter starts): it starts afresh, with Popen.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
AHEAD = (
    "asyncio",
    "email.message",
    "sqlparse",
    "jinja2",
    "yaml",
    "msgpack",
    "httpx",
    "redis.asyncio",
    "redis.asyncio.cluster",
    "pydantic",
    "cryptography.x509",
    "OpenSSL.SSL",
    "service_identity",
    "twisted.internet.defer",
    "twisted.internet.protocol",
    "twisted.internet.tcp",
    "twisted.internet.asyncioreactor",  # the module; daphne installs the reactor itself
    "twisted.web.http",
    "autobahn.twisted.websocket",
    "django.core.management",
    "django.db.models",
    "django.http",
    "django.urls",
    "django.forms",
    "django.template.defaulttags",
    "django.template.defaultfilters",
    "django.template.loader_tags",
    "django.db.migrations",
    "django.test",
    "pydantic.json_schema",
    "pydantic.functional_validators",
    "wsgiref.handlers",
    "email.generator",
    "unittest.mock",
    "asgiref.sync",
    # What every server and shell imports next, on Django's side (apps, middleware, the
    # SQLite backend, the admin), channels, whitenoise and uvicorn: a forked `manage.py
    # shell` that imports the ASGI application took 0.54 to 0.59 s of CPU, not 0.61.
    "environ",
    "django.core.asgi",
    "django.contrib.admin.sites",
    "django.contrib.admin.options",
    "django.contrib.admin.helpers",
    "django.contrib.admin.apps",
    "django.contrib.auth.apps",
    "django.contrib.auth.hashers",
    "django.contrib.auth.password_validation",
    "django.contrib.auth.tokens",
    "django.contrib.contenttypes.apps",
    "django.contrib.sessions.apps",
    "django.contrib.sessions.backends.db",
    "django.contrib.sessions.middleware",
    "django.contrib.messages.apps",
    "django.contrib.messages.middleware",
    "django.contrib.staticfiles.apps",
    "django.contrib.staticfiles.storage",
    "django.contrib.sites.shortcuts",
    "django.db.backends.sqlite3.base",
    "django.middleware.clickjacking",
    "django.middleware.common",
    "django.middleware.csrf",
    "django.middleware.security",
    "django.views.i18n",
    "channels.auth",
    "channels.db",
    "channels.generic.websocket",
    "channels.layers",
    "channels.routing",
    "channels.security.websocket",
    "daphne.http_protocol",
    "daphne.ws_protocol",
    "whitenoise.middleware",
    "whitenoise.storage",
    "uvicorn",
    # The upstream client's transport, built as a server starts (limiter/upstream.py).
    # aiohttp reads only its *_NO_EXTENSIONS flags, PYTHONASYNCIODEBUG and SSLKEYLOGFILE
    # when imported, which no test sets.
    "aiohttp",
    "httpx_aiohttp",
    "cachetools",
    "multiprocessing",
    "statistics",
    "wave",
)
_MESSAGE = 1 << 20


# --- the fork server --------------------------------------------------------------------------
def main(fd: int) -> None:
    """The fork server's loop, on its end of a socket pair (see ForkServer)."""
    for name in AHEAD:
        __import__(name)
    from django.conf import settings

    assert not settings.configured, "Django's settings were read ahead"
    assert "twisted.internet.reactor" not in sys.modules, "a reactor was installed ahead"
    assert threading.active_count() == 1, "a thread was started ahead: forking is unsafe"
    gc.collect()
    gc.freeze()  # see the module's docstring
    channel = socket.socket(fileno=fd)
    codes: dict[int, int] = {}
    while True:
        _reap(codes)
        if not select.select([channel], [], [], 0.05)[0]:
            continue
        message, fds, _flags, _address = socket.recv_fds(channel, _MESSAGE, 3)
        if not message:
            return  # the test process has gone: its children are orphans now, as before
        request = json.loads(message)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                channel.close()
                _child(request, fds)  # does not return
            for descriptor in fds:
                os.close(descriptor)
            answer: dict[str, Any] = {"pid": pid}
        else:
            _reap(codes)
            answer = {"returncode": codes.get(request["pid"])}
        channel.send(json.dumps(answer).encode())


def _reap(codes: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        codes[pid] = os.waitstatus_to_exitcode(status)


def _child(request: dict[str, Any], fds: list[int]) -> None:
    if request.get("new_session"):
        os.setsid()
    for target, descriptor in enumerate(fds):
        os.dup2(descriptor, target)
    for descriptor in set(fds) - {0, 1, 2}:
        os.close(descriptor)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    import runpy

    if request["argv"][1] == "-m":  # `python -m module ...`, as the benchmark starts some
        module = request["argv"][2]
        sys.argv = request["argv"][2:]  # run_module puts the module's file first, as -m does
        sys.path[0] = os.getcwd()
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = request["argv"][1]  # as given: it becomes sys.argv[0], as with `python script`
        sys.argv = request["argv"][1:]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    sys.exit(0)  # SystemExit, from here or from the script, ends the child as it would


# --- the test process's side ------------------------------------------------------------------
class ForkServer:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Without DJANGO_SETTINGS_MODULE: nothing imported ahead may configure Django.
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from tests.forkserver import main; main({theirs.fileno()})"],
            cwd=ROOT,
            env=env,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        self.channel = ours
        self.lock = threading.Lock()

    def ask(self, request: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        with self.lock:
            socket.send_fds(self.channel, [json.dumps(request).encode()], fds or [])
            answer = self.channel.recv(_MESSAGE)
        if not answer:
            raise RuntimeError(f"the fork server has exited ({self.process.poll()})")
        return json.loads(answer)

    def close(self) -> None:
        self.channel.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


_server: ForkServer | None = None


def _fork_server() -> ForkServer:
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = ForkServer()
        atexit.register(_server.close)
    return _server


class ForkedProcess:
    """What the tests use of `subprocess.Popen`, for a process the fork server started."""

    def __init__(self, args: list[str], pid: int, pipes: dict[str, IO[Any] | None]) -> None:
        self.args, self.pid, self.returncode = args, pid, None
        self.stdin, self.stdout, self.stderr = pipes["stdin"], pipes["stdout"], pipes["stderr"]

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = _fork_server().ask({"op": "poll", "pid": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


Process = ForkedProcess | subprocess.Popen[str]  # what `spawn` answers


def spawn(
    args: list[str],
    *,
    env: dict[str, str],
    cwd: Path = ROOT,
    stdout: IO[Any] | int = subprocess.DEVNULL,
    stderr: IO[Any] | int = subprocess.STDOUT,
    stdin: int = subprocess.DEVNULL,
    new_session: bool = False,
) -> Process:
    """`subprocess.Popen(args, env=env, cwd=cwd, stdin=.., stdout=.., stderr=..,
    start_new_session=..)` for `args` = [sys.executable, "manage.py", ...] (or
    [sys.executable, "-m", module, ...]), text pipes where PIPE is asked."""
    assert args[0] == sys.executable and (args[1].endswith("manage.py") or args[1] == "-m"), args
    if env.get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
        return subprocess.Popen(  # noqa: S603 (the test's own manage.py)
            args,
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=new_session,
        )
    opened: list[int] = []  # the child's ends, closed here once sent
    pipes: dict[str, IO[Any] | None] = {"stdin": None, "stdout": None, "stderr": None}

    def child_end(name: str, how: IO[Any] | int, reading: bool) -> int:
        if how == subprocess.PIPE:
            read, write = os.pipe()
            pipes[name] = open(write if reading else read, "w" if reading else "r")  # noqa: SIM115
            opened.append(read if reading else write)
            return opened[-1]
        if how == subprocess.DEVNULL:
            opened.append(os.open(os.devnull, os.O_RDWR))
            return opened[-1]
        return how if isinstance(how, int) else how.fileno()

    fds = [child_end("stdin", stdin, True), child_end("stdout", stdout, False)]
    fds.append(fds[1] if stderr == subprocess.STDOUT else child_end("stderr", stderr, False))
    try:
        request = {"op": "spawn", "argv": args, "env": env, "cwd": str(cwd)}
        answer = _fork_server().ask({**request, "new_session": new_session}, fds)
    finally:
        for descriptor in opened:
            os.close(descriptor)
    return ForkedProcess(args, answer["pid"], pipes)


def run(
    args: list[str], *, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120
) -> tuple[int, str]:
    """`subprocess.run(args, ...)` for a one-off `manage.py` command: its exit code and its
    output (stdout and stderr together)."""
    with tempfile.TemporaryFile("w+") as output:
        process = spawn(args, env=env, cwd=cwd, stdout=output)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        output.seek(0)
        return code, output.read()
