"""What the live view shows of embeddings coalescing: the last minute, per account and model.

Web processes merge concurrent embeddings calls into one upstream request
(limiter/gateway/coalesce.py) and tell the limiter about each one it sends
(events.COALESCED); the limiter keeps these sliding counts and puts them in its live
snapshot, so the dashboard shows inputs per upstream request and how long callers
waited to be merged, across every web process.
"""

from __future__ import annotations

from collections import deque

from limiter.protocol import events

WINDOW = 60.0
MAX_KEPT = 10_000  # merged requests remembered per account and model (bounded memory)


class CoalesceStats:
    def __init__(self) -> None:
        # (account, model) -> deque of (at, inputs, callers, waited, longest_wait)
        self._sent: dict[tuple[str, str], deque[tuple[float, int, int, float, float]]] = {}

    def record(self, message: events.CoalescedMessage, now: float) -> None:
        rows = self._sent.setdefault((message["account"], message["model"]), deque(maxlen=MAX_KEPT))
        rows.append(
            (
                now,
                int(message["inputs"]),
                int(message["callers"]),
                float(message["waited"]),
                float(message["longest_wait"]),
            )
        )

    def snapshot(self, now: float) -> list[events.CoalescingSnapshot]:
        out: list[events.CoalescingSnapshot] = []
        for (account, model), rows in list(self._sent.items()):
            while rows and rows[0][0] < now - WINDOW:
                rows.popleft()
            if not rows:
                del self._sent[(account, model)]
                continue
            requests = len(rows)
            inputs = sum(row[1] for row in rows)
            callers = sum(row[2] for row in rows)
            out.append(
                {
                    "account": account,
                    "model": model,
                    "requests": requests,
                    "inputs": inputs,
                    "callers": callers,
                    "inputs_per_request": round(inputs / requests, 2),
                    "mean_wait_ms": round(sum(row[3] for row in rows) / callers * 1000, 2)
                    if callers
                    else 0.0,
                    "longest_wait_ms": round(max(row[4] for row in rows) * 1000, 2),
                }
            )
        return out
