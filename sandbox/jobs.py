"""Fine-tune and batch jobs that progress in accelerated time.

Status is derived from the clock whenever a job is read instead of being pushed by a
background task, so an injected clock drives the whole life cycle without sleeping.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Fractions of the configured duration at which a job enters each phase.
_FT_PHASES: tuple[tuple[float, str], ...] = ((0.0, "pending"), (0.1, "queued"), (0.25, "running"))
_BATCH_VALIDATING_SHARE = 0.2
BATCH_DEADLINE_SECONDS = 24 * 3600
# What the sandbox bills a fine-tune, in Together's unit for `total_price`: nano-dollars
# (the together SDK divides it by 1e9), per token processed: $0.48 per million tokens.
FINE_TUNE_NANODOLLARS_PER_TOKEN = 480


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Job:
    """What fine-tunes and batches share: an active interval on the monotonic clock."""

    id: str
    started: float  # monotonic
    created_wall: float
    duration: float
    cancelled_at: float | None = None  # monotonic

    def finish_time(self) -> float:
        """When the job stopped (or will stop) being active, on the monotonic clock."""
        done = self.started + self.duration
        return min(done, self.cancelled_at) if self.cancelled_at is not None else done

    def is_active(self, now: float) -> bool:
        return now < self.finish_time()

    def wall(self, mono: float) -> float:
        return self.created_wall + (mono - self.started)


@dataclass
class FineTune(Job):
    request: dict[str, Any] = field(default_factory=dict)
    trainingfile_numlines: int = 0
    trainingfile_size: int = 0
    training_tokens: int = 0  # the training file's words, as the price estimate counts them

    def token_count(self, now: float) -> int | None:
        """Tokens processed, as Together reports them once tokenization is done (at the
        running phase): n_epochs passes over the training file; a job cancelled while
        training counts the share it trained. None before tokenization."""
        running_since = self.started + self.duration * _FT_PHASES[2][0]
        end = min(now, self.finish_time())
        if end < running_since:
            return 0 if self.status(now) == "cancelled" else None
        full = int(self.request.get("n_epochs", 1) or 1) * self.training_tokens
        if self.status(now) == "cancelled":
            span = self.started + self.duration - running_since
            return int(full * (end - running_since) / span) if span > 0 else full
        return full

    def status(self, now: float) -> str:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "cancelled"
        elapsed = now - self.started
        if elapsed >= self.duration:
            return "completed"
        share = elapsed / self.duration if self.duration else 1.0
        return [name for start, name in _FT_PHASES if share >= start][-1]

    def to_json(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        updated = self.wall(min(now, self.finish_time()))
        running_since = self.started + self.duration * _FT_PHASES[2][0]
        model = self.request.get("model")
        suffix = self.request.get("suffix") or "sandbox"
        tokens = self.token_count(now)
        return {
            "id": self.id,
            "object": "fine-tune",
            "status": status,
            "user_id": "sandbox-user",
            "model": model,
            "training_file": self.request.get("training_file"),
            "validation_file": self.request.get("validation_file"),
            "model_output_name": f"sandbox/{str(model).split('/')[-1]}-{suffix}-{self.id[3:11]}",
            "n_epochs": self.request.get("n_epochs", 1),
            "n_checkpoints": self.request.get("n_checkpoints", 1),
            "n_evals": self.request.get("n_evals", 0),
            "batch_size": self.request.get("batch_size", "max"),
            "learning_rate": self.request.get("learning_rate", 0.00001),
            "training_type": self.request.get("training_type"),
            "training_method": self.request.get("training_method"),
            "trainingfile_numlines": self.trainingfile_numlines,
            "trainingfile_size": self.trainingfile_size,
            "created_at": iso(self.created_wall),
            "updated_at": iso(updated),
            "started_at": iso(self.wall(running_since)) if now >= running_since else None,
            "epochs_completed": self.request.get("n_epochs", 1) if status == "completed" else 0,
            "token_count": tokens,
            "total_price": None if tokens is None else tokens * FINE_TUNE_NANODOLLARS_PER_TOKEN,
            "events": [],
        }


@dataclass
class Batch(Job):
    request: dict[str, Any] = field(default_factory=dict)
    file_size_bytes: int = 0
    request_count: int = 0
    output_file_id: str | None = None

    def status(self, now: float) -> str:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "CANCELLED"
        elapsed = now - self.started
        if elapsed >= self.duration:
            return "COMPLETED"
        return "VALIDATING" if elapsed < self.duration * _BATCH_VALIDATING_SHARE else "IN_PROGRESS"

    def progress(self, now: float) -> float:
        """Percent done; frozen where a cancel stopped it."""
        elapsed = min(now, self.finish_time()) - self.started
        running = self.duration * (1 - _BATCH_VALIDATING_SHARE)
        if self.duration <= 0 or elapsed >= self.duration:
            return 100.0
        done = (elapsed - self.duration * _BATCH_VALIDATING_SHARE) / running
        return round(max(0.0, done) * 100, 1)

    def to_json(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        return {
            "id": self.id,
            "user_id": "sandbox-user",
            "input_file_id": self.request["input_file_id"],
            "file_size_bytes": self.file_size_bytes,
            "status": status,
            "job_deadline": iso(self.created_wall + BATCH_DEADLINE_SECONDS),
            "created_at": iso(self.created_wall),
            "endpoint": self.request["endpoint"],
            "progress": self.progress(now),
            "model_id": self.request.get("model_id"),
            "output_file_id": self.output_file_id,
            "error_file_id": None,
            "error": None,
            "completed_at": iso(self.wall(self.finish_time())) if status == "COMPLETED" else None,
        }


def new_fine_tune_id() -> str:
    return f"ft-{uuid.uuid4()}"


def new_batch_id() -> str:
    # Together's batch ids are bare UUIDs.
    return str(uuid.uuid4())


def max_overlap(jobs: list[Job]) -> int:
    """Most jobs active at the same moment, from their [start, finish) intervals."""
    events = sorted(
        [(job.started, 1) for job in jobs] + [(job.finish_time(), -1) for job in jobs],
        # An end and a start at the same instant do not overlap: process ends first.
        key=lambda event: (event[0], event[1]),
    )
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best
