"""The fork server (tests/forkserver.py) starts `manage.py` as `python manage.py` would:
the process's own argv, environment and working directory, its own settings, and its
exit code or signal as subprocess.Popen tells them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests import forkserver
from tests.servers import PYTHON, ROOT


def shell(code: str, tmp_path: Path, new_session: bool = False, **env: str) -> forkserver.Process:
    return forkserver.spawn(
        [PYTHON, "manage.py", "shell", "-v", "0", "-c", code],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            **env,
        },
        stdout=subprocess.PIPE,
        new_session=new_session,
    )


def test_a_forked_process_runs_with_its_own_argv_environment_and_settings(tmp_path):
    process = shell(
        "import os, sys; from django.conf import settings\n"
        "print(sys.argv[0], os.getcwd(), os.environ['SLUICE_FORK_PROBE'],"
        " settings.DATABASES['default']['NAME'], os.getppid() != os.getpid())",
        tmp_path,
        SLUICE_FORK_PROBE="probe-1",
    )
    assert process.wait(60) == 0
    assert process.stdout is not None
    assert process.stdout.read().split() == [
        "manage.py",
        str(ROOT),
        "probe-1",
        str(tmp_path / "db.sqlite3"),
        "True",
    ]


def test_exit_codes_and_signals_are_reported_as_popen_does(tmp_path):
    assert shell("import sys; sys.exit(3)", tmp_path).wait(60) == 3
    assert shell("raise RuntimeError('boom')", tmp_path).wait(60) == 1
    sleeper = shell("import time; print('up', flush=True); time.sleep(60)", tmp_path)
    assert sleeper.stdout is not None and sleeper.stdout.readline() == "up\n"
    assert sleeper.poll() is None
    sleeper.send_signal(signal.SIGTERM)
    assert sleeper.wait(10) == -signal.SIGTERM
    sleeper.kill()  # gone already: nothing is sent


def test_a_process_given_its_own_python_path_starts_with_it(tmp_path):
    """PYTHONPATH is read as the interpreter starts (sys.path, and a `sitecustomize` found
    on it runs before anything else): a fork of the warm server has started already, so such
    a process must start afresh. The skewed-clock limiter of the scale-out tests is one."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['SLUICE_SITE_RAN'] = 'yes'\n")
    process = shell(
        f"import os, sys; print(os.environ.get('SLUICE_SITE_RAN'), {str(site)!r} in sys.path)",
        tmp_path,
        PYTHONPATH=str(site),
    )
    assert process.wait(60) == 0
    assert process.stdout is not None
    assert process.stdout.read().split() == ["yes", "True"]


def test_a_process_given_a_session_of_its_own_leads_its_process_group(tmp_path):
    """As Popen's start_new_session: the benchmark stops its servers by signalling their
    process groups (bench/procs.py stop; tests/bench/conftest.py forks them)."""
    code = "import os, time; print(os.getsid(0) == os.getpgid(0) == os.getpid(), flush=True)\n"
    leader = shell(code + "time.sleep(60)", tmp_path, new_session=True)
    assert leader.stdout is not None and leader.stdout.readline() == "True\n"
    os.killpg(leader.pid, signal.SIGTERM)
    assert leader.wait(10) == -signal.SIGTERM
    member = shell(code, tmp_path)
    assert member.wait(60) == 0
    assert member.stdout is not None and member.stdout.read() == "False\n"
