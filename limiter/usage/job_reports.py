"""Fine-tunes' and batches' usage, from what Together reports once a job has ended.

A fine-tune: Together's job object carries `token_count` (tokens processed, training and
evaluation) and `total_price` once tokenization is done; `total_price` is in
nano-dollars (the together SDK divides it by 1e9 for display). Sluice takes both as
they stand at the job's end (a cancelled job is billed up to its cancellation), as
prompt tokens of the base model, with the cost Together states; no price list applies.

A batch: Together's batch object carries no usage; each line of its output file is an
answer with its own `usage`. The lines are summed per model and priced at the price in
force (staff's override, else Together's list) times SLUICE_BATCH_PRICE_FACTOR (0.5 by
default: Together's documented 50% batch discount); the discounted price is what the
rollup row keeps.

A video: Together's final view of it carries `outputs.cost`, what it charged for the clip,
in US dollars (its video guide's example answer: `"cost": 0.28`; the SDK types it as an
integer, so either is read). Where it reports none, the clip is priced at the model's
per-unit price in force (staff's override), else at VIDEO_LIST_PRICES; one request, one
unit, no tokens.

Exactly once: a job's rows are written in one transaction with its JobUsage row, whose
one-to-one on the job refuses a second. Several pollers, or one seeing the final state
twice, record it once; a poller dying before the commit leaves it for the next pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from limiter.usage.pricing import NO_PRICE, Price, cost_of, discounted

NANODOLLARS = Decimal(1_000_000_000)

# A job's end as a status class of its rollup row: what it used is counted either way.
FINE_TUNE_STATUS = {"completed": "2xx", "cancelled": "2xx", "user_error": "4xx", "error": "5xx"}
BATCH_STATUS = {"COMPLETED": "2xx", "CANCELLED": "2xx", "EXPIRED": "2xx", "FAILED": "5xx"}

VIDEO_STATUS = {"completed": "2xx", "cancelled": "2xx", "failed": "5xx"}
# US dollars a clip, where Together's answer states no cost. Source: Together's video
# guide, docs.together.ai/docs/videos-overview (its example answer for
# minimax/video-01-director: 1366x768, "cost": 0.28), read December 2026.
VIDEO_LIST_PRICES = {"minimax/video-01-director": Decimal("0.28")}

MSG_NO_VIDEO_COST = "Together reported no cost for this video, and its model has no price"
MSG_NO_TOKEN_COUNT = "Together reported no token count for this fine-tune"
MSG_NO_OUTPUT = "the batch has no output file"
MSG_OUTPUT_GONE = "the batch's output file could not be read (HTTP {status})"


@dataclass(frozen=True, slots=True)
class EndedJob:
    """The job whose usage is recorded, as the usage records name it (the jobs app's
    Job, reduced to what a rollup row copies)."""

    id: int
    public_id: str
    team_id: int
    team_name: str
    key_prefix: str
    account_name: str
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobLine:
    """One rollup row of a job's usage: one model's counts and cost."""

    model: str
    status_class: str
    requests: int
    prompt: int
    completion: int
    price: Price
    cost: Decimal

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(frozen=True, slots=True)
class JobUsageReport:
    """What a job used: its lines (none when Together reported nothing) and why not."""

    lines: list[JobLine]
    note: str = ""

    @property
    def total_tokens(self) -> int:
        return sum(line.total for line in self.lines)

    @property
    def cost(self) -> Decimal:
        return sum((line.cost for line in self.lines), Decimal(0))


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def fine_tune_usage(obj: dict[str, Any], fallback_model: str) -> JobUsageReport:
    """A fine-tune's usage from Together's final view of it."""
    tokens = _count(obj.get("token_count"))
    if tokens is None:
        return JobUsageReport([], MSG_NO_TOKEN_COUNT)
    price = _count(obj.get("total_price"))
    cost = Decimal(price) / NANODOLLARS if price is not None else Decimal(0)
    model = obj.get("model") if isinstance(obj.get("model"), str) else fallback_model
    status = FINE_TUNE_STATUS.get(str(obj.get("status")), "2xx")
    return JobUsageReport([JobLine(str(model)[:200], status, 1, tokens, 0, NO_PRICE, cost)])


def video_usage(obj: dict[str, Any], fallback_model: str, price: Price) -> JobUsageReport:
    """A video's usage from Together's final view of it: one clip, at the cost Together
    states, else at `price`'s per-unit amount, else at its list price."""
    model = str(obj.get("model") if isinstance(obj.get("model"), str) else fallback_model)[:200]
    outputs = obj.get("outputs")
    stated = _decimal_cost(outputs.get("cost")) if isinstance(outputs, dict) else None
    cost = stated if stated is not None else price[2]
    if cost is None:
        cost = VIDEO_LIST_PRICES.get(model)
    status = VIDEO_STATUS.get(str(obj.get("status")), "2xx")
    line = JobLine(model, status, 1, 0, 0, (None, None, cost), cost or Decimal(0))
    return JobUsageReport([line], "" if cost is not None else MSG_NO_VIDEO_COST)


def _decimal_cost(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return Decimal(str(value))


def batch_usage(
    content: bytes, fallback_model: str, price_of: Callable[[str], Price], factor: Decimal
) -> JobUsageReport:
    """A batch's usage from its output file (JSONL, one answer a line), per model, priced
    at `price_of(model)` times `factor`. Lines that do not parse are skipped."""
    per_model: dict[tuple[str, str], list[int]] = {}
    for raw in content.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        response = line.get("response") if isinstance(line, dict) else None
        if not isinstance(response, dict):
            continue
        body = response.get("body")
        body = body if isinstance(body, dict) else {}
        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        model = body.get("model") if isinstance(body.get("model"), str) else fallback_model
        code = _count(response.get("status_code")) or 200
        status = f"{min(max(code // 100, 1), 5)}xx"
        counts = per_model.setdefault((str(model)[:200], status), [0, 0, 0])
        counts[0] += 1
        counts[1] += _count(usage.get("prompt_tokens")) or 0
        counts[2] += _count(usage.get("completion_tokens")) or 0
    lines = []
    for (model, status), (requests, prompt, completion) in sorted(per_model.items()):
        price = discounted(price_of(model), factor)
        lines.append(
            JobLine(
                model,
                status,
                requests,
                prompt,
                completion,
                price,
                cost_of(price, prompt, completion, 0),
            )
        )
    return JobUsageReport(lines)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)
