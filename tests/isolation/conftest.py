"""Tenant isolation: the personas, and the world they act in, on one real Sluice.

One server for the whole package: starting it and running jobs to completion costs
seconds, and every test here either reads or is refused (what a refused write would
have changed is checked in the database). Team B owns things:
  - files: a plain multipart upload, one through the SDKs' redirect flow, a batch input
    and the output file its batch produced;
  - fine-tunes and batches in each state a job can be in: completed, running upstream,
    queued in Sluice (B's team may run one of each kind at a time);
  - the fine-tuned model its completed fine-tune produced;
  - videos (completed, running upstream, queued in Sluice) and an evaluation;
  - a code interpreter session.
Team A (the other tenant) has its own file and jobs, so a refusal is not A being broken.
B's teammate is a second key of team B. The outsider has no key, a made-up key or B's
revoked key; on the dashboard side, it is anonymous or a logged-in user who is not staff.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from django.db import connections

from tests.jobs.conftest import MODEL, batch_lines
from tests.servers import SluiceServer
from tests.waiting import wait_until

# Generous request rates: the walk makes a few hundred calls and must not be paced.
FAST = {"requests_per_minute": 6000, "pace_per_minute": None, "burst": 100}
FAST_LIMITS = {
    "files": FAST,
    "fine_tunes": FAST,
    "batches": FAST,
    "videos": FAST,
    "evaluations": FAST,
    "code_interpreter": FAST,
}
VIDEO_MODEL = "minimax/video-01-director"
EVAL_INPUT = b'{"prompt": "2+2?", "answer": "4"}\n'


def eval_body(file_id: str, judge: str = MODEL) -> dict[str, Any]:
    """An evaluation create's body, the together SDK's classify shape."""
    return {
        "type": "classify",
        "parameters": {
            "input_data_file_path": file_id,
            "judge": {"model": judge, "model_source": "serverless", "system_template": "Right?"},
            "labels": ["right", "wrong"],
            "pass_labels": ["right"],
        },
    }


TRAINING = b"".join(json.dumps({"text": f"example {i}"}).encode() + b"\n" for i in range(10))
NON_STAFF_USERNAME = "dev"
NON_STAFF_PASSWORD = secrets.token_urlsafe(12)


# --- small helpers -------------------------------------------------------------------------
def assert_openai_error(response: httpx.Response, status: int, code: str | None) -> dict:
    """Status first, then the body: OpenAI's error shape with the expected code."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    if code is not None:
        assert error["code"] == code, error
    return error


_loopback = itertools.count(2)


def new_loopback_address() -> str:
    """A client address of its own (127.0.x.y): the team API refuses every key from an
    address after 30 failed authentications a minute, and an outsider's walk must not
    lock out A and B, who call from 127.0.0.1."""
    n = next(_loopback)
    return f"127.0.{n // 250 + 1}.{n % 250 + 1}"


# --- the server's database, read with the ORM ------------------------------------------------
class ServerDb:
    """The running server's SQLite database, as a second Django connection in this process."""

    def __init__(self, path: str, blocker: Any) -> None:
        self.alias = "isolation_server"
        self.blocker = blocker
        configured = connections.configure_settings(
            {
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": path,
                    "OPTIONS": {"timeout": 20},
                }
            }
        )
        connections.databases[self.alias] = copy.deepcopy(configured["default"])

    def read(self, query: Callable[[str], Any]) -> Any:
        with self.blocker.unblock():
            return query(self.alias)

    def close(self) -> None:
        with self.blocker.unblock():
            connections[self.alias].close()
        del connections.databases[self.alias]

    # What a refused request must leave as it was.
    def tenant_state(self, *team_ids: int) -> dict[str, list]:
        """Jobs and file ownership of these teams: what a /v1/ call could create or change.
        (Not a running job's upstream status: the poller updates it as it goes.)"""
        from limiter.jobs.models import Job, TeamFile
        from limiter.models import ManagedObject

        def query(db: str) -> dict[str, list]:
            return {
                "jobs": list(
                    Job.objects.using(db)
                    .filter(team_id__in=team_ids)
                    .order_by("pk")
                    .values_list(
                        "public_id",
                        "team_id",
                        "state",
                        "cancel_requested",
                        "upstream_id",
                        "finished_at",
                        "error",
                    )
                ),
                "files": list(
                    TeamFile.objects.using(db)
                    .filter(team_id__in=team_ids)
                    .order_by("pk")
                    .values_list("team_id", "file_id")
                ),
                "objects": list(
                    ManagedObject.objects.using(db)
                    .filter(team_id__in=team_ids)
                    .order_by("pk")
                    .values_list("team_id", "kind", "object_id")
                ),
            }

        return self.read(query)

    def ops_state(self) -> dict[str, list]:
        """Teams, keys, profiles, limits, users and the audit log: what an ops call could change.
        (Not a key's last use: the recorder writes it as keys are used.)"""
        from django.contrib.auth import get_user_model

        from dashboard.audit import ACCESS_ACTIONS
        from dashboard.models import AuditEntry, PersonalToken
        from limiter.alerts.models import Alert, Webhook
        from limiter.models import (
            ApiKey,
            EndpointLimit,
            LimitProfile,
            Share,
            Team,
            UpstreamAccount,
        )
        from limiter.usage.models import Budget, ModelPrice

        def rows(queryset: Any, *exclude: str) -> list[dict]:
            return [
                {k: v for k, v in row.items() if k not in exclude}
                for row in queryset.order_by("pk").values()
            ]

        def query(db: str) -> dict[str, list]:
            return {
                "teams": rows(Team.objects.using(db)),
                "keys": rows(ApiKey.objects.using(db), "last_used_at"),
                "profiles": rows(LimitProfile.objects.using(db)),
                "limits": rows(EndpointLimit.objects.using(db)),
                "accounts": rows(UpstreamAccount.objects.using(db)),
                "users": rows(get_user_model().objects.using(db), "last_login"),
                # Changes: a refusal or a sign-in is audited too, and changes nothing.
                "audit": rows(AuditEntry.objects.using(db).exclude(action__in=ACCESS_ACTIONS)),
                "webhooks": rows(Webhook.objects.using(db)),
                "alerts": rows(Alert.objects.using(db)),
                "budgets": rows(Budget.objects.using(db)),
                "shares": rows(Share.objects.using(db)),
                "prices": rows(ModelPrice.objects.using(db)),
                "tokens": rows(PersonalToken.objects.using(db), "last_used_at"),
            }

        return self.read(query)

    def file_owner_count(self) -> int:
        from limiter.jobs.models import TeamFile

        return self.read(lambda db: TeamFile.objects.using(db).count())

    def jobs_of(self, team_id: int) -> list[Any]:
        from limiter.jobs.models import Job

        return self.read(lambda db: list(Job.objects.using(db).filter(team_id=team_id)))

    def job(self, public_id: str) -> Any:
        from limiter.jobs.models import Job

        return self.read(lambda db: Job.objects.using(db).get(public_id=public_id))


# --- personas --------------------------------------------------------------------------------
class TeamClient:
    """A caller of the team API with one key (or none, or a bad one)."""

    def __init__(
        self,
        server: SluiceServer,
        secret: str | None,
        *,
        own_address: bool = False,
        address: str = "127.0.0.1",
    ) -> None:
        headers = {"authorization": f"Bearer {secret}"} if secret is not None else {}
        self.address = new_loopback_address() if own_address else address
        transport = httpx.HTTPTransport(local_address=self.address)
        self.http = httpx.Client(
            base_url=server.url, headers=headers, timeout=30, transport=transport
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def upload(self, content: bytes, purpose: str, name: str = "data.jsonl") -> str:
        answer = self.post("/v1/files", data={"purpose": purpose}, files={"file": (name, content)})
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def close(self) -> None:
        self.http.close()


@dataclass
class Team:
    name: str
    id: int
    secret: str
    key_id: int
    client: TeamClient


@dataclass
class Jobs:
    """One team's job of a kind in each state, by Sluice id and (once started) Together's."""

    public: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    server: SluiceServer
    db: ServerDb
    ops: httpx.Client  # the ops API with the admin token
    a: Team
    b: Team
    b_teammate: Team
    b_revoked_secret: str
    b_profile_id: int
    b_limit_id: int
    b_budget_id: int
    b_share_id: int
    b_webhook_id: int
    b_files: dict[str, str]  # kind -> file id
    b_fine_tunes: Jobs
    b_batches: Jobs
    b_model: str  # the output model of B's completed fine-tune
    b_videos: Jobs
    b_evaluation: str  # its workflow id
    b_tci_session: str  # a code interpreter session it started
    a_file: str
    a_batch_file: str
    a_fine_tune: str
    a_batch: str
    a_video: str
    a_evaluation: str
    a_eval_file: str
    a_tci_session: str

    def b_ids(self) -> set[str]:
        """Every id and name of B's, for "never shows up in A's answer" checks."""
        return {
            *self.b_files.values(),
            *self.b_fine_tunes.public.values(),
            *self.b_fine_tunes.upstream.values(),
            *self.b_batches.public.values(),
            *self.b_batches.upstream.values(),
            *self.b_videos.public.values(),
            *self.b_videos.upstream.values(),
            self.b_evaluation,
            self.b_tci_session,
            self.b_model,
        }

    def upstream(self, method: str, path: str) -> httpx.Response:
        """Together's own view (the sandbox, asked directly)."""
        return httpx.request(
            method,
            f"{self.server.sandbox.v1_url}{path}",
            headers={"authorization": "Bearer x"},
            timeout=10,
        )

    def new_team(self, name: str, profile: str = "iso-fast") -> Team:
        return new_team(self.server, self.ops, name, profile)

    def add_key(self, team: Team, name: str) -> Team:
        """Another key of `team`: a teammate."""
        return Team(team.name, team.id, *_issue(self.server, self.ops, team.id, name))


def new_team(server: SluiceServer, ops: httpx.Client, name: str, profile: str) -> Team:
    """A team with one key, through the ops API."""
    team = ops.post("/teams", json={"name": name, "profile": profile}).raise_for_status().json()
    return Team(name, team["id"], *_issue(server, ops, team["id"], ""))


def _issue(
    server: SluiceServer, ops: httpx.Client, team_id: int, name: str
) -> tuple[str, int, TeamClient]:
    issued = ops.post(f"/teams/{team_id}/keys", json={"name": name}).raise_for_status().json()
    return issued["secret"], issued["key"]["id"], TeamClient(server, issued["secret"])


def _job_path(kind: str, job_id: str) -> str:
    return f"/v2/videos/{job_id}" if kind == "videos" else f"/v1/{kind}/{job_id}"


def _job_status(client: TeamClient, kind: str, job_id: str) -> str:
    answer = client.get(_job_path(kind, job_id))
    assert answer.status_code == 200, answer.text
    return answer.json()["status"]


def _build_world(server: SluiceServer, db: ServerDb) -> World:
    sandbox = server.sandbox
    sandbox.configure(
        {
            "fine_tune_seconds": 1.0,
            "batch_seconds": 1.0,
            "video_seconds": 1.0,
            "evaluation_seconds": 1.0,
        }
    )
    # The account and team A: fast request rates, the default's caps (3 fine-tunes, 10
    # batches). Team B: one running job of each kind at a time, so its next one queues.
    server.make_profile("iso-fast", FAST_LIMITS, account=True)
    server.make_profile(
        "iso-b",
        {
            **FAST_LIMITS,
            "fine_tunes": {**FAST, "max_concurrent": 1},
            "batches": {**FAST, "max_concurrent": 1},
            "videos": {**FAST, "max_concurrent": 1},
        },
    )
    server.make_profile("iso-c", {**FAST_LIMITS, "batches": {**FAST, "max_concurrent": 1}})
    server.python(
        "from django.contrib.auth import get_user_model\n"
        f"get_user_model().objects.create_user({NON_STAFF_USERNAME!r}, "
        f"password={NON_STAFF_PASSWORD!r})\n"
    )
    ops = httpx.Client(
        base_url=f"{server.url}/api",
        headers={"authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    )
    a = new_team(server, ops, "iso-a", "iso-fast")
    b = new_team(server, ops, "iso-b", "iso-b")
    b_teammate = Team(b.name, b.id, *_issue(server, ops, b.id, "teammate"))
    revoked_secret, revoked_id, revoked_client = _issue(server, ops, b.id, "left the team")
    revoked_client.close()
    ops.post(f"/keys/{revoked_id}/revoke").raise_for_status()
    b_profile = next(p for p in ops.get("/profiles").json() if p["name"] == "iso-b")
    b_limit_id = next(limit["id"] for limit in b_profile["limits"] if limit["endpoint"] == "chat")
    b_budget_id = (
        ops.post(
            f"/teams/{b.id}/budgets",
            json={"unit": "dollars", "period": "month", "limit": "1000"},
        )
        .raise_for_status()
        .json()["id"]
    )
    account = server.python(
        "from limiter.models import UpstreamAccount\n"
        "print(UpstreamAccount.objects.get(is_default=True).name)\n"
    ).strip()
    b_share_id = (
        ops.post(
            "/shares",
            json={"account": account, "team": b.name, "endpoint": "chat", "fraction": 0.1},
        )
        .raise_for_status()
        .json()["id"]
    )
    # B's webhook, disabled: nothing is ever sent to it, it only gives its page a path.
    b_webhook_id = int(
        server.python(
            "from limiter.alerts.models import Webhook\n"
            f"print(Webhook.objects.create(name='iso-b-hook', team_id={b.id}, enabled=False,"
            " url='https://hooks.example/iso-b-secret').pk)\n"
        )
    )

    # B's files: multipart, the SDKs' redirect flow (POST, PUT to Location, preprocess),
    # a batch input.
    files = {"multipart": b.client.upload(TRAINING, "fine-tune", "b-train.jsonl")}
    redirect = b.client.post(
        "/v1/files", data={"purpose": "fine-tune", "file_name": "b-redirect.jsonl"}
    )
    assert redirect.status_code == 302, redirect.text
    files["redirect"] = redirect.headers["x-together-file-id"]
    httpx.put(redirect.headers["location"], content=TRAINING, timeout=10).raise_for_status()
    preprocessed = b.client.post(f"/v1/files/{files['redirect']}/preprocess")
    assert preprocessed.status_code == 200, preprocessed.text
    files["batch_input"] = b.client.upload(batch_lines(3), "batch-api", "b-batch.jsonl")
    files["eval_input"] = b.client.upload(EVAL_INPUT, "eval", "b-eval.jsonl")
    a_file = a.client.upload(TRAINING, "fine-tune", "a-train.jsonl")
    a_eval_file = a.client.upload(EVAL_INPUT, "eval", "a-eval.jsonl")
    a_batch_file = a.client.upload(batch_lines(2), "batch-api", "a-batch.jsonl")

    def start(team: Team, kind: str, body: dict) -> str:
        path = "/v2/videos" if kind == "videos" else f"/v1/{kind}"
        answer = team.client.post(path, json=body)
        assert answer.status_code in (200, 201), answer.text
        data = answer.json()
        return (data["job"] if kind == "batches" else data)["id"]

    def evaluate(team: Team, file_id: str) -> str:
        answer = team.client.post("/v1/evaluation", json=eval_body(file_id))
        assert answer.status_code == 200, answer.text
        return answer.json()["workflow_id"]

    def tci_session(team: Team) -> str:
        answer = team.client.post("/v1/tci/execute", json={"code": "x = 1", "language": "python"})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["session_id"]

    fine_tune = {"model": MODEL, "training_file": files["multipart"]}
    batch = {"endpoint": "/v1/chat/completions", "input_file_id": files["batch_input"]}
    video = {"model": VIDEO_MODEL, "prompt": "a sluice gate at dawn"}
    b_fine_tunes, b_batches, b_videos = Jobs(), Jobs(), Jobs()
    # Short jobs first: B's (to complete), and A's own.
    b_fine_tunes.public["completed"] = start(b, "fine-tunes", fine_tune)
    b_batches.public["completed"] = start(b, "batches", batch)
    a_fine_tune = start(a, "fine-tunes", {"model": MODEL, "training_file": a_file})
    a_batch = start(
        a, "batches", {"endpoint": "/v1/chat/completions", "input_file_id": a_batch_file}
    )
    b_videos.public["completed"] = start(b, "videos", video)
    a_video = start(a, "videos", video)
    b_evaluation = evaluate(b, files["eval_input"])
    a_evaluation = evaluate(a, a_eval_file)
    b_tci_session, a_tci_session = (tci_session(team) for team in (b, a))
    for team, kind, job_id, done in (
        (b, "videos", b_videos.public["completed"], "completed"),
        (a, "videos", a_video, "completed"),
        (b, "fine-tunes", b_fine_tunes.public["completed"], "completed"),
        (b, "batches", b_batches.public["completed"], "COMPLETED"),
        (a, "fine-tunes", a_fine_tune, "completed"),
        (a, "batches", a_batch, "COMPLETED"),
    ):
        wait_until(
            lambda team=team, kind=kind, job_id=job_id: _job_status(team.client, kind, job_id),
            lambda status, done=done: status == done,
            within=30.0,
            every=0.1,
        )
    # Then long ones: running for the whole session, and one more of each kind that waits
    # in Sluice behind it (B's cap is one at a time).
    sandbox.configure(
        {"fine_tune_seconds": 3600.0, "batch_seconds": 3600.0, "video_seconds": 3600.0}
    )
    b_fine_tunes.public["running"] = start(
        b, "fine-tunes", {**fine_tune, "training_file": files["redirect"]}
    )
    b_fine_tunes.public["queued"] = start(b, "fine-tunes", fine_tune)
    b_batches.public["running"] = start(b, "batches", batch)
    b_batches.public["queued"] = start(b, "batches", batch)
    b_videos.public["running"] = start(b, "videos", video)
    b_videos.public["queued"] = start(b, "videos", video)

    for kind, jobs in (("fine-tunes", b_fine_tunes), ("batches", b_batches), ("videos", b_videos)):
        for state, job_id in jobs.public.items():
            shown = b.client.get(_job_path(kind, job_id)).json()
            if state != "queued":
                jobs.upstream[state] = shown["sluice"]["upstream_id"]
            else:
                assert shown["status"] in ("queued", "QUEUED"), shown
    completed_batch = b.client.get(f"/v1/batches/{b_batches.public['completed']}").json()
    files["batch_output"] = completed_batch["output_file_id"]
    assert files["batch_output"], completed_batch
    b_model = b.client.get(f"/v1/fine-tunes/{b_fine_tunes.public['completed']}").json()[
        "model_output_name"
    ]
    assert b_model, "B's completed fine-tune names no output model"
    # Together serves an account's fine-tuned models; the sandbox does once told of them.
    sandbox.configure({"extra_models": [b_model]})

    return World(
        server=server,
        db=db,
        ops=ops,
        a=a,
        b=b,
        b_teammate=b_teammate,
        b_revoked_secret=revoked_secret,
        b_profile_id=b_profile["id"],
        b_limit_id=b_limit_id,
        b_budget_id=b_budget_id,
        b_share_id=b_share_id,
        b_webhook_id=b_webhook_id,
        b_files=files,
        b_fine_tunes=b_fine_tunes,
        b_batches=b_batches,
        b_model=b_model,
        b_videos=b_videos,
        b_evaluation=b_evaluation,
        b_tci_session=b_tci_session,
        a_file=a_file,
        a_batch_file=a_batch_file,
        a_fine_tune=a_fine_tune,
        a_batch=a_batch,
        a_video=a_video,
        a_evaluation=a_evaluation,
        a_eval_file=a_eval_file,
        a_tci_session=a_tci_session,
    )


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory, django_db_blocker: Any) -> Iterator[World]:
    """One server for the package, and everything team B (and A) owns on it."""
    path = tmp_path_factory.mktemp("isolation")
    with SluiceServer(path) as server:
        db = ServerDb(str(path / "sluice.sqlite3"), django_db_blocker)
        built = _build_world(server, db)
        try:
            yield built
        finally:
            for team in (built.a, built.b, built.b_teammate):
                team.client.close()
            built.ops.close()
            db.close()


# --- the /v1/ personas --------------------------------------------------------------------------
@pytest.fixture
def team_a(world: World) -> TeamClient:
    return world.a.client


@pytest.fixture
def owner(world: World) -> TeamClient:
    return world.b.client


@pytest.fixture
def teammate(world: World) -> TeamClient:
    return world.b_teammate.client


OUTSIDERS = ["no_key", "bogus_key", "revoked_key"]


@pytest.fixture(params=OUTSIDERS)
def outsider(request: pytest.FixtureRequest, world: World) -> Iterator[TeamClient]:
    """Someone without a valid key: none, a made-up one, or B's own key since revoked."""
    secret = {
        "no_key": None,
        "bogus_key": "sk-sluice-" + secrets.token_urlsafe(24),
        "revoked_key": world.b_revoked_secret,
    }[request.param]
    client = TeamClient(world.server, secret, own_address=True)
    yield client
    client.close()


# --- the dashboard personas ------------------------------------------------------------------
class Browser:
    """A browser's session on the dashboard: cookies, and the CSRF token sent on writes
    (so a refusal is the permission check, not a missing token)."""

    def __init__(self, server: SluiceServer) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.http.get("/login/").raise_for_status()  # sets the csrftoken cookie

    @property
    def csrf(self) -> str:
        return self.http.cookies["csrftoken"]

    def login(self, username: str, password: str) -> Browser:
        answer = self.http.post(
            "/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": self.csrf},
        )
        assert answer.status_code == 302, f"login as {username} failed: {answer.status_code}"
        return self

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"x-csrftoken": self.csrf, **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="package")
def anonymous(world: World) -> Iterator[Browser]:
    browser = Browser(world.server)
    yield browser
    browser.close()


@pytest.fixture(scope="package")
def non_staff(world: World) -> Iterator[Browser]:
    browser = Browser(world.server).login(NON_STAFF_USERNAME, NON_STAFF_PASSWORD)
    yield browser
    browser.close()


@pytest.fixture(scope="package")
def staff(world: World) -> Iterator[Browser]:
    browser = Browser(world.server).login(world.server.admin_username, world.server.admin_password)
    yield browser
    browser.close()
