"""The sandbox's in-memory world: config, limiter, counters, files and jobs.

One `SandboxState` belongs to one `SandboxApp`. The event loop is single-threaded, so each
method runs to completion without interleaving: a limit check and its record are atomic.
Tests reach the same methods in process through `app.state`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import KINDS, SandboxConfig
from .dynamic import DynamicDecision, DynamicLimiter
from .files import StoredFile, new_file_id
from .http import ApiError
from .jobs import Batch, FineTune, max_overlap, new_batch_id, new_fine_tune_id
from .ratelimit import Decision, SlidingWindowLimiter, max_in_any_window
from .textgen import completion_words, count_words, message_text

Clock = Callable[[], float]


@dataclass
class KindStats:
    requests: int = 0
    ok: int = 0
    status_429: int = 0
    status_503: int = 0
    other_errors: int = 0
    admitted_times: list[float] = field(default_factory=list)

    def record_status(self, status: int) -> None:
        if status < 300:
            self.ok += 1
        elif status == 429:
            self.status_429 += 1
        elif status == 503:
            self.status_503 += 1
        else:
            self.other_errors += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "status_429": self.status_429,
            "status_503": self.status_503,
            "other_errors": self.other_errors,
            "admitted_times": list(self.admitted_times),
            "max_admitted_in_any_1s_window": max_in_any_window(self.admitted_times, 1.0),
            "max_admitted_in_any_60s_window": max_in_any_window(self.admitted_times, 60.0),
        }


class SandboxState:
    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        # `reset` returns to this config, so a sandbox started with an API key keeps it.
        self._initial_config = copy.deepcopy(config or SandboxConfig())
        self.clock = clock
        self.wall_clock = wall_clock
        # Signs upload URLs (resources.upload_signature); files live in this process only,
        # so a per-process secret signs every URL that can still find its file.
        self.upload_secret = secrets.token_bytes(32)
        self._clear()

    def _clear(self) -> None:
        self.config = copy.deepcopy(self._initial_config)
        self.rng = random.Random(self.config.seed)
        self.limiter = SlidingWindowLimiter()
        self.dynamic = DynamicLimiter()
        self.kinds = {kind: KindStats() for kind in KINDS}
        self.streams = {"started": 0, "completed": 0, "disconnected": 0}
        # GET /v1/models: asked, answered, abandoned by the caller while held, held now.
        self.model_lists = {"asked": 0, "answered": 0, "abandoned": 0, "waiting": 0}
        self.model_list_released = asyncio.Event()  # set while hold_model_list is off
        if not self.config.hold_model_list:
            self.model_list_released.set()
        self.seen_headers: dict[str, str | None] = {"x-request-id": None}
        self.files: dict[str, StoredFile] = {}
        self.fine_tunes: dict[str, FineTune] = {}
        self.fine_tunes_rejected = 0
        self.batches: dict[str, Batch] = {}
        # Dedicated endpoints by id (sandbox/endpoints.py): their models are not rate limited.
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.videos: dict[str, Any] = {}  # id -> extras.Video
        self.evaluations: dict[str, Any] = {}  # workflow id -> extras.Evaluation
        self.tci_sessions: dict[str, Any] = {}  # session id -> tci.Session
        # Every embeddings request of strings, refused or not: [model, inputs], so tests
        # see how calls were merged.
        self.embeddings_requests: list[list[Any]] = []

    # --- control --------------------------------------------------------------------
    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge a partial config (or reset with `{"reset": true}`); returns the new config."""
        patch = dict(patch)
        if patch.pop("reset", False):
            self.reset()
        if "seed" in patch:
            self.rng = random.Random(patch["seed"])
        self.config.merge(patch)
        if self.config.hold_model_list:
            self.model_list_released.clear()
        else:
            self.model_list_released.set()
        return self.config.to_dict()

    def dedicated(self, model: str) -> bool:
        """Whether a started dedicated endpoint serves `model`: Together sets no rate limit
        there (the organisation pays per replica-minute)."""
        return any(e["model"] == model and e["state"] == "STARTED" for e in self.endpoints.values())

    def reset(self) -> None:
        """Forget counters, stats, jobs and files; restore the starting config."""
        self._clear()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        fine_tunes = list(self.fine_tunes.values())
        batches = list(self.batches.values())
        return {
            **{kind: stats.to_json() for kind, stats in self.kinds.items()},
            "streams": dict(self.streams),
            "model_lists": dict(self.model_lists),
            "fine_tunes": {
                "created": len(fine_tunes),
                "active": sum(job.is_active(now) for job in fine_tunes),
                "rejected_409": self.fine_tunes_rejected,
                "max_concurrent_fine_tunes_seen": max_overlap(list(fine_tunes)),
            },
            "batches": {
                "created": len(batches),
                "active": sum(job.is_active(now) for job in batches),
                "max_concurrent_batches_seen": max_overlap(list(batches)),
                "request_counts": {job.id: job.request_count for job in batches},
            },
            "files": {"count": len(self.files)},
            "seen_headers": dict(self.seen_headers),
            "embeddings_requests": [list(row) for row in self.embeddings_requests],
            "dynamic": self._dynamic_stats(now),
        }

    def _dynamic_stats(self, now: float) -> dict[str, Any] | None:
        limits = self.config.dynamic
        if limits is None:
            return None
        return {
            "now": now,
            "window_seconds": limits.window_seconds,
            "models": self.dynamic.stats(limits, now),
        }

    # --- inference --------------------------------------------------------------------
    def note_request(self, kind: str | None, headers: dict[str, str]) -> None:
        # Everything but the credential, so tests can check what a gateway forwards.
        self.seen_headers = {k: v for k, v in headers.items() if k != "authorization"}
        self.seen_headers.setdefault("x-request-id", None)
        if kind:
            self.kinds[kind].requests += 1

    def note_embeddings(self, model: str, inputs: int) -> None:
        self.embeddings_requests.append([model, inputs])

    def note_status(self, kind: str, status: int) -> None:
        self.kinds[kind].record_status(status)

    def admit(self, key: str, kind: str) -> Decision:
        now = self.clock()
        decision = self.limiter.acquire(key, kind, self.config.limits[kind], now)
        if decision.allowed:
            self.kinds[kind].admitted_times.append(now)
        return decision

    def dynamic_admit(self, *, key: str, kind: str, model: str, tokens: int) -> DynamicDecision:
        """Together's dynamic limits (config.dynamic must be set); check and record in one step."""
        assert self.config.dynamic is not None
        now = self.clock()
        decision = self.dynamic.acquire(
            self.config.dynamic, key=key, model=model, tokens=tokens, now=now
        )
        if decision.allowed:
            self.kinds[kind].admitted_times.append(now)
        return decision

    def dynamic_settle(self, *, key: str, model: str, tokens: int, status: int) -> None:
        """How an admitted request ended: only successes raise the dynamic rate."""
        assert self.config.dynamic is not None
        self.dynamic.settle(
            self.config.dynamic,
            key=key,
            model=model,
            tokens=tokens,
            status=status,
            now=self.clock(),
        )

    def capacity_fault(self) -> bool:
        """Whether this admitted request fails with Together's capacity 503."""
        rate = self.config.dynamic.capacity_503_rate if self.config.dynamic else 0.0
        # No roll at rate 0, so turning this on never shifts the other random faults' sequence.
        return rate > 0 and self.rng.random() < rate

    def take_injected_status(self) -> int | None:
        """The next status queued in `fail_next`, consumed by this request."""
        return self.config.fail_next.pop(0) if self.config.fail_next else None

    def random_fault(self) -> int | None:
        roll = self.rng.random()
        if roll < self.config.fail_rate_429:
            return 429
        if roll < self.config.fail_rate_429 + self.config.fail_rate_503:
            return 503
        return None

    # --- files --------------------------------------------------------------------
    def file_create(self, *, filename: str, purpose: str, content: bytes | None) -> StoredFile:
        stored = StoredFile(
            id=new_file_id(),
            filename=filename,
            purpose=purpose,
            created_at=int(self.wall_clock()),
            content=content,
        )
        self.files[stored.id] = stored
        return stored

    def file_get(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(404, f"File {file_id} not found", code="file_not_found")
        return stored

    def _job_file(self, file_id: str, *, plain: bool) -> StoredFile | None:
        if file_id in self.files:
            return self.files[file_id]
        if self.config.validate_file_ids:
            raise ApiError(400, f"File {file_id} not found", code="file_not_found", plain=plain)
        return None

    # --- fine-tunes ----------------------------------------------------------------
    def fine_tune_create(self, request: dict[str, Any]) -> FineTune:
        now = self.clock()
        cap = self.config.max_running_fine_tunes
        active = sum(job.is_active(now) for job in self.fine_tunes.values())
        if cap is not None and active >= cap:
            self.fine_tunes_rejected += 1
            raise ApiError(
                409,
                f"You have reached the maximum number of concurrent fine-tuning jobs ({cap}). "
                "Wait for a running job to finish.",
                code="concurrent_job_limit",
            )
        training = self._job_file(request["training_file"], plain=False)
        job = FineTune(
            id=new_fine_tune_id(),
            started=now,
            created_wall=self.wall_clock(),
            duration=self.config.fine_tune_seconds,
            request=request,
            trainingfile_numlines=training.line_count if training else 0,
            trainingfile_size=len(training.content or b"") if training else 0,
            training_tokens=len((training.content or b"").split()) if training else 0,
        )
        self.fine_tunes[job.id] = job
        return job

    def fine_tune_get(self, job_id: str) -> FineTune:
        job = self.fine_tunes.get(job_id)
        if job is None:
            raise ApiError(404, f"Fine-tune job {job_id} not found", code="not_found")
        return job

    def fine_tune_cancel(self, job_id: str) -> FineTune:
        job = self.fine_tune_get(job_id)
        now = self.clock()
        # Cancelling a finished job changes nothing, as on Together.
        if job.is_active(now):
            job.cancelled_at = now
        return job

    # --- batches --------------------------------------------------------------------
    def batch_create(self, request: dict[str, Any]) -> Batch:
        source = self._job_file(request["input_file_id"], plain=True)
        job = Batch(
            id=new_batch_id(),
            started=self.clock(),
            created_wall=self.wall_clock(),
            duration=self.config.batch_seconds,
            request=request,
            file_size_bytes=len(source.content or b"") if source else 0,
            request_count=source.line_count if source else 0,
        )
        self.batches[job.id] = job
        return job

    def batch_get(self, batch_id: str) -> Batch:
        job = self.batches.get(batch_id)
        if job is None:
            raise ApiError(404, f"Batch {batch_id} not found", plain=True)
        return job

    def batch_cancel(self, batch_id: str) -> Batch:
        job = self.batch_get(batch_id)
        now = self.clock()
        if job.is_active(now):
            job.cancelled_at = now
        return job

    def batch_json(self, job: Batch) -> dict[str, Any]:
        """The job as Together shows it; a completed batch gets its output file on first sight."""
        now = self.clock()
        if job.status(now) == "COMPLETED" and job.output_file_id is None:
            output = self.file_create(
                filename=f"batch-{job.id}-output.jsonl",
                purpose="batch-api",
                content=self._batch_output(job),
            )
            job.output_file_id = output.id
        return job.to_json(now)

    def _batch_output(self, job: Batch) -> bytes:
        """One answer line per valid input line, shaped like a chat completion."""
        source = self.files.get(job.request["input_file_id"])
        lines = []
        for index, raw in enumerate((source.content or b"").splitlines() if source else []):
            try:
                item = json.loads(raw)
                custom_id, request = item.get("custom_id", str(index)), item.get("body") or {}
            except (ValueError, AttributeError):
                continue  # malformed lines would land in the error file, which the sandbox omits
            prompt = message_text(request.get("messages") or [])
            words = completion_words(
                prompt, request.get("max_tokens") or self.config.default_max_tokens
            )
            body = {
                "id": f"{job.id}-{index}",
                "object": "chat.completion",
                "model": request.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": count_words(prompt),
                    "completion_tokens": len(words),
                    "total_tokens": count_words(prompt) + len(words),
                },
            }
            lines.append({"custom_id": custom_id, "response": {"status_code": 200, "body": body}})
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)
