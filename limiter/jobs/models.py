"""Fine-tune jobs, batches and video jobs Sluice holds for teams, the log of their status changes,
and which team owns which file and fine-tuned model (one Together account holds every
team's files and models).

A job is stored before the team gets an answer, so a restart loses nothing. Its local
`state` is what Sluice owns (queued, starting, running, done); `upstream_status` is
Together's status string, kept verbatim. A job holds one of its account's slots while
it is `starting` or `running`.

The tables keep the names they were created with in the limiter app (`db_table`):
the jobs app took the models over in its first migration, without moving a row.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

FINE_TUNE_TERMINAL = frozenset({"completed", "cancelled", "error", "user_error"})
BATCH_TERMINAL = frozenset({"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"})
# The together SDK 3.1's VideoJob knows in_progress, completed and failed; "cancelled"
# is what Sluice records for one cancelled before it started.
VIDEO_TERMINAL = frozenset({"completed", "failed", "cancelled"})


class JobKind(models.TextChoices):
    FINE_TUNE = "fine_tune", "Fine-tune"
    BATCH = "batch", "Batch"
    VIDEO = "video", "Video"


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued in Sluice"
    # Claimed by one process and being submitted: the upstream id may not be known yet.
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running upstream"
    DONE = "done", "Ended"
    # A split batch's parent: never run itself, its parts are.
    GROUP = "group", "Split batch"


# The states that hold a slot of the account (and of the team).
HOLDING_STATES = (JobState.STARTING, JobState.RUNNING)

# The limit profile row each kind's caps come from.
ENDPOINT_OF_KIND = {
    JobKind.FINE_TUNE: "fine_tunes",
    JobKind.BATCH: "batches",
    JobKind.VIDEO: "videos",
}
TERMINAL_OF_KIND = {
    JobKind.FINE_TUNE: FINE_TUNE_TERMINAL,
    JobKind.BATCH: BATCH_TERMINAL,
    JobKind.VIDEO: VIDEO_TERMINAL,
}
ID_PREFIX = {JobKind.FINE_TUNE: "ft-sluice-", JobKind.BATCH: "batch-sluice-"}


def new_public_id(kind: str) -> str:
    return ID_PREFIX.get(JobKind(kind), "video-sluice-") + str(uuid.uuid4())


def new_marker() -> str:
    # Short: it goes into a fine-tune's `suffix`, which ends up in the output model name.
    return "sl-" + uuid.uuid4().hex[:12]


class Job(models.Model):
    public_id = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=10, choices=JobKind.choices)
    team = models.ForeignKey("limiter.Team", on_delete=models.PROTECT, related_name="jobs")
    key = models.ForeignKey(
        "limiter.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    key_prefix = models.CharField(max_length=32, blank=True)
    account = models.ForeignKey(
        "limiter.UpstreamAccount", on_delete=models.PROTECT, related_name="jobs"
    )
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="parts"
    )

    state = models.CharField(max_length=10, choices=JobState.choices, default=JobState.QUEUED)
    upstream_status = models.CharField(max_length=40, blank=True)
    upstream_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    # Sent upstream so a start interrupted by a crash can be found again instead of repeated.
    marker = models.CharField(max_length=32, default=new_marker, editable=False)

    request = models.JSONField(help_text="The body to send upstream.")
    upstream = models.JSONField(null=True, blank=True, help_text="Together's last view of the job.")
    error = models.TextField(blank=True)
    request_count = models.PositiveIntegerField(null=True, blank=True)
    # The estimate the job holds against its budgets, {model: [tokens, dollars]}, from its
    # create until its usage settles it or it ends without running (limiter/jobs/budgets.py).
    budget_hold = models.JSONField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)

    created_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A queued job is not started before this (Together said busy); a running one not polled.
    not_before = models.DateTimeField(null=True, blank=True)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    poll_failures = models.PositiveIntegerField(default=0)
    # Polls in a row that found the status unchanged; while polls fail, Together's 404s in
    # a row (the job policy in services.py ends a job after a few).
    unchanged_polls = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "limiter_job"
        ordering = ["-created_at", "-id"]
        indexes = [
            # Slot counts and the queue: jobs of one account and kind in a state, oldest first.
            models.Index(
                fields=["account", "kind", "state", "created_at"], name="job_account_queue"
            ),
            # Per-team slot counts and the team's last start (fair order).
            models.Index(fields=["team", "kind", "state"], name="job_team_state"),
            # The poller: running jobs due for a poll; stale "starting" claims.
            models.Index(fields=["state", "next_poll_at"], name="job_due_poll"),
            # A team's own list, newest first.
            models.Index(fields=["team", "kind", "-created_at"], name="job_team_list"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.state}/{self.upstream_status or '-'})"

    def is_terminal_status(self, status: str) -> bool:
        # Unknown statuses count as still running: holding a slot too long is safer
        # than starting a job Together would refuse.
        return status in TERMINAL_OF_KIND[JobKind(self.kind)]


class JobEvent(models.Model):
    """One change of a job's state or upstream status."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=10, choices=JobState.choices)
    upstream_status = models.CharField(max_length=40, blank=True)
    message = models.CharField(max_length=300, blank=True)

    class Meta:
        db_table = "limiter_jobevent"
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.job_id} {self.state}/{self.upstream_status} {self.message}"


class TeamFile(models.Model):
    """A file a team uploaded through Sluice. Every team's files live in the same Together
    account, so Sluice keeps who owns which, and shows a team only its own."""

    team = models.ForeignKey("limiter.Team", on_delete=models.CASCADE, related_name="files")
    file_id = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "limiter_teamfile"
        constraints = [
            models.UniqueConstraint(fields=["team", "file_id"], name="one_owner_row_per_file")
        ]

    def __str__(self) -> str:
        return f"{self.file_id} ({self.team_id})"


class ModelKind(models.TextChoices):
    MODEL = "model", "Fine-tuned model"
    # A fine-tune job's id, which `from_checkpoint` names (`ft-...` or `ft-...:step`).
    CHECKPOINT = "checkpoint", "Checkpoint"


class TeamModel(models.Model):
    """A fine-tuned model or checkpoint a team's job produced. Every team's fine-tunes run
    in the same Together account, so any key could call any of them by name: Sluice
    keeps who owns which, and refuses the others (unless the owner's profile shares it).

    Recorded only from what Sluice itself knows: its own job ids, and what Together
    reports for the team's job; never from a team's request.
    """

    team = models.ForeignKey("limiter.Team", on_delete=models.CASCADE, related_name="models")
    # Stored lower-cased: a name differing only in case must not slip past the check.
    name = models.CharField(max_length=300, unique=True)
    kind = models.CharField(max_length=10, choices=ModelKind.choices)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "limiter_teammodel"
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.team_id})"
