"""The jobs app takes its models over from the limiter app without moving a row: a
database migrated to the state before (limiter 0009, usage 0003), holding jobs, their
events, a team's file and model, a job's usage and a permission granted on jobs, is
migrated forward, and everything reads back through the jobs app's models (SQLite and
PostgreSQL).

"upgrade" made the database as the code before did (the migrations alone, no content
type of the jobs app); "partial" with `manage.py migrate` of this code stopped short,
whose post_migrate made the jobs app's content types beside the limiter app's."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests import forkserver
from tests.conftest import POSTGRES_URL, need, reachable

ROOT = Path(__file__).resolve().parents[2]

# The last migrations before the jobs app existed.
BEFORE = [
    ("limiter", "0009_job_budget_hold"),
    ("usage", "0003_exact_amounts"),
    ("dashboard", "0005_personal_token"),
]

INSERT = """
import json
from decimal import Decimal
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

executor = MigrationExecutor(connection)
if {upgrade!r}:
    executor.migrate({before!r})
apps = executor.loader.project_state({before!r}).apps
assert "jobs" not in {{config.label for config in apps.get_app_configs()}}
Team = apps.get_model("limiter", "Team")
Job = apps.get_model("limiter", "Job")
account = apps.get_model("limiter", "UpstreamAccount").objects.get(is_default=True)
team = Team.objects.create(name="alpha", profile=account.profile, upstream=account)
key = apps.get_model("limiter", "ApiKey").objects.create(
    team=team, prefix="sk-sluice-old", secret_hash="h" * 64
)
common = dict(team=team, account=account, key=key, key_prefix=key.prefix)
parent = Job.objects.create(
    public_id="batch-sluice-parent", kind="batch", state="group", request={{}}, **common
)
job = Job.objects.create(
    public_id="ft-sluice-old", kind="fine_tune", state="done", upstream_id="ft-up-old",
    request={{"model": "m", "training_file": "file-1"}}, budget_hold={{"m": [10, 0.5]}},
    parent=parent, **common
)
apps.get_model("limiter", "JobEvent").objects.create(job=job, state="done", message="ended")
apps.get_model("limiter", "TeamFile").objects.create(team=team, file_id="file-1")
apps.get_model("limiter", "TeamModel").objects.create(
    team=team, name="org/tuned-old", kind="model", job=job
)
apps.get_model("usage", "JobUsage").objects.create(
    job=job, total_tokens=1234, cost=Decimal("0.5")
)
Permission = apps.get_model("auth", "Permission")
group = apps.get_model("auth", "Group").objects.create(name="job-editors")
group.permissions.add(
    Permission.objects.get(content_type__app_label="limiter", codename="change_job")
)
print(json.dumps(job.pk))
"""

READ = """
import json
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from limiter.jobs.models import Job, JobEvent, TeamFile, TeamModel
from limiter.models import Team

job = Job.objects.select_related("parent", "usage").get(public_id="ft-sluice-old")
team = Team.objects.get(name="alpha")
fresh = Job.objects.create(
    public_id="ft-sluice-new", kind="fine_tune", team=team, account=job.account, request={}
)
print(json.dumps({
    "pk": job.pk,
    "state": job.state,
    "request": job.request,
    "budget_hold": job.budget_hold,
    "parent": job.parent.public_id,
    "parts": list(job.parent.parts.values_list("public_id", flat=True)),
    "events": list(JobEvent.objects.filter(job=job).values_list("message", flat=True)),
    "files": list(TeamFile.objects.filter(team=team).values_list("file_id", flat=True)),
    "models": list(TeamModel.objects.filter(job=job).values_list("name", flat=True)),
    "usage_tokens": job.usage.total_tokens,
    "team_jobs": sorted(team.jobs.values_list("public_id", flat=True)),
    "fresh_pk_above": fresh.pk > job.pk,
    "content_types": sorted(
        ContentType.objects.filter(model__in=["job", "jobevent", "teamfile", "teammodel"])
        .values_list("app_label", flat=True)
        .distinct()
    ),
    "group_permissions": sorted(
        f"{p.content_type.app_label}.{p.codename}"
        for p in Group.objects.get(name="job-editors").permissions.all()
    ),
}))
"""


class Database:
    """`manage.py` against one database of its own, in a process of its own (forked)."""

    def __init__(self, url: str) -> None:
        self.env = {
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DATABASE_URL": url,
            "SECRET_KEY": "jobs-app-migration-test",
        }

    def manage(self, *args: str) -> str:
        """Its output, standard output and error together."""
        code, output = forkserver.run([sys.executable, "manage.py", *args], env=self.env, cwd=ROOT)
        assert code == 0, f"manage.py {args[0]} failed:\n{output}"
        return output

    def python(self, code: str) -> object:
        return json.loads(self.manage("shell", "-c", code).strip().splitlines()[-1])


@pytest.fixture
def database(engine: str, tmp_path: Path) -> Iterator[Database]:
    if engine == "sqlite":
        yield Database(f"sqlite:///{tmp_path / 'before.sqlite3'}")
        return
    need(reachable(POSTGRES_URL), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    name = f"domain_jobs_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}")
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("engine", "path"), [("sqlite", "upgrade"), ("postgres", "upgrade"), ("sqlite", "partial")]
)
def test_a_database_from_before_the_jobs_app_keeps_its_rows(database: Database, path: str) -> None:
    if path == "partial":
        for app, migration in reversed(BEFORE):  # dashboard's post_migrate needs auth's tables
            database.manage("migrate", app, migration, "--noinput", "-v0")
    pk = database.python(INSERT.format(before=BEFORE, upgrade=path == "upgrade"))

    database.manage("migrate", "--noinput", "-v0")
    after = database.python(READ)

    assert after == {
        "pk": pk,
        "state": "done",
        "request": {"model": "m", "training_file": "file-1"},
        "budget_hold": {"m": [10, 0.5]},
        "parent": "batch-sluice-parent",
        "parts": ["ft-sluice-old"],
        "events": ["ended"],
        "files": ["file-1"],
        "models": ["org/tuned-old"],
        "usage_tokens": 1234,
        "team_jobs": ["batch-sluice-parent", "ft-sluice-new", "ft-sluice-old"],
        "fresh_pk_above": True,
        "content_types": ["jobs"],
        "group_permissions": ["jobs.change_job"],
    }
    # Nothing left for makemigrations: the models and the migrations agree.
    database.manage("makemigrations", "--check", "--dry-run")
