"""What a job is estimated to use: held against its team's and key's budgets from its
create until its usage settles it (limiter/jobs/budgets.py, limiter/usage/budgets.py).

- A batch: each request line's prompt at about 4 characters a token plus its
  `max_tokens` (or `max_completion_tokens`; 256 when unset), the estimate a call of the
  same body holds (limiter/usage/sizing.py `estimate_parts`), summed per model (the
  line's `model`, else the batch's `model_id`), and in dollars at the price this process
  holds for the model times SLUICE_BATCH_PRICE_FACTOR (0 when it knows none).
- A fine-tune: its training file's size at 4 bytes a token, times `n_epochs` (1 when
  unset), on its base model; in dollars 0, as Sluice knows no fine-tuning price (the
  `total_price` Together reports settles it when the job ends).

- A video: no tokens; in dollars its model's per-unit price in force (staff's override),
  else its list price (limiter/usage/job_reports.py VIDEO_LIST_PRICES), else 0 (the
  `outputs.cost` Together reports settles it when the video ends).

Stored on the job (Job.budget_hold) as {model: [tokens, dollars]}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from limiter.usage.budgets import JobHold
from limiter.usage.job_reports import VIDEO_LIST_PRICES
from limiter.usage.pricing import Price, cost_of
from limiter.usage.sizing import estimate_parts

Estimate = dict[str, list[float]]  # model -> [tokens, US dollars]

# Numbers a caller chose are bounded before they are summed: a line's completion and a
# fine-tune's epochs (Together refuses far less; the estimate only has to stay finite).
MAX_LINE_COMPLETION = 10_000_000
MAX_EPOCHS = 10_000


def _kind(endpoint: str) -> str:
    """A batch's `endpoint` ("/v1/chat/completions") as the endpoint kind of a call."""
    if "chat" in endpoint:
        return "chat"
    if endpoint.rstrip("/").endswith("completions"):
        return "completions"
    return endpoint.rstrip("/").rsplit("/", 1)[-1]


def batch_estimate(
    lines: list[bytes], endpoint: str, fallback_model: str, price_of: Callable[[str], Price]
) -> Estimate:
    """A batch's estimate from its input file's lines; `price_of` gives the (discounted)
    price of a model. A line that does not parse is counted by its size."""
    kind = _kind(endpoint)
    counts: dict[str, list[int]] = {}
    for raw in lines:
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        body = line.get("body") if isinstance(line, dict) else None
        if not isinstance(body, dict):
            counts.setdefault(fallback_model, [0, 0])[0] += math.ceil(len(raw) / 4)
            continue
        prompt, completion = estimate_parts(body, kind)
        model = body.get("model") if isinstance(body.get("model"), str) else fallback_model
        count = counts.setdefault(str(model), [0, 0])
        count[0] += prompt
        count[1] += min(completion, MAX_LINE_COMPLETION)
    return {
        model: [float(prompt + completion), float(cost_of(price_of(model), prompt, completion, 0))]
        for model, (prompt, completion) in counts.items()
    }


def fine_tune_estimate(request: dict[str, Any], training_bytes: int) -> Estimate:
    """A fine-tune's estimate: its training tokens (see the module docstring)."""
    epochs = request.get("n_epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        epochs = 1
    tokens = math.ceil(max(training_bytes, 0) / 4) * min(epochs, MAX_EPOCHS)
    return {str(request.get("model") or ""): [float(tokens), 0.0]}


def total(estimate: Estimate) -> float:
    return sum(tokens for tokens, _cost in estimate.values())


def job_holds(job: str, estimate: Any) -> list[JobHold]:
    """A stored estimate as the holds the limiter keeps (one a model)."""
    holds = []
    if isinstance(estimate, dict):
        for model, amounts in estimate.items():
            if isinstance(amounts, list) and len(amounts) == 2:
                holds.append(JobHold(job, str(model), float(amounts[0]), float(amounts[1])))
    return holds


def video_estimate(model: str, price: Price) -> Estimate:
    """A video's estimate (see the module docstring): `price` is the model's in force."""
    per_clip = price[2] if price[2] is not None else VIDEO_LIST_PRICES.get(model)
    return {model: [0.0, float(per_clip or 0)]}
