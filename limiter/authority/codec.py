"""The one place the limiter's answers are worded as messages (limiter/protocol/events.py),
and its tickets read as the engine's arguments.

Every decision a web process receives is made here: the engine's (grant, queued, refuse)
and a refusal before the engine (a budget used up, units out of range,
limiter/authority/budget_gate.py) alike, each stamped with this host's monotonic clock and
this limiter instance, so a web process learns the offset per limiter (client.Lateness)
and tells a restarted limiter's answers apart.
"""

from __future__ import annotations

import time
from typing import Any

from limiter.authority.budget_gate import BudgetGate, Refusal
from limiter.authority.engine import Decision, Engine, Quota
from limiter.protocol import events
from limiter.protocol.events import DecisionMessage
from limiter.usage.budgets import JobRefused


def ticket_args(message: events.AcquireMessage) -> dict[str, Any]:
    """A ticket's keyword arguments for the engine: where to answer, its request id, and
    its extras: a merged embeddings ticket is refundable (CHARGE_KEY and CHARGE_ACCOUNT
    alike); a ticket that brings its own max wait (a merged request, or one asked again of
    a restarted limiter with what is left of its wait) queues for that long instead of
    its key's."""
    args: dict[str, Any] = {"reply_to": message["reply"], "request_id": message["request_id"]}
    if message.get("charge"):
        args["refundable"] = True
    max_wait = message.get("max_wait")
    if max_wait is not None:
        args["max_wait"] = float(max_wait)
    return args


class Codec:
    def __init__(self, instance: str, budgets: BudgetGate) -> None:
        self.instance = instance  # this limiter, apart from one before or after it
        self.budgets = budgets  # whether a grant is budgeted and holds a reservation

    def decision(self, decision: Decision, budget: Refusal | None = None) -> DecisionMessage:
        """The engine's decision on a ticket; a grant lists the shadow limits (and the
        shadow `budget`) that would have refused it."""
        ticket = decision.ticket
        grant = decision.kind == "grant"
        message: DecisionMessage = {
            "type": events.DECISION,
            "ticket": ticket.id,
            "kind": decision.kind,
            "lease": decision.lease,
            "reason": decision.reason,
            "scope": decision.scope,
            "retry_after": decision.retry_after,
            "waited": decision.waited,
            "limit": decision.quota.limit_per_minute,
            "remaining": decision.quota.remaining,
            "reset": decision.quota.reset_after,
            "max_wait": ticket.max_wait,
            "at": time.monotonic(),
            "limiter": self.instance,
            "budgeted": grant and self.budgets.covers(ticket.key.id[1]),
            # The reservation its usage report settles (its ticket id), when it holds one.
            "reservation": ticket.id if grant and self.budgets.reserved(ticket.id) else "",
        }
        shadow = [events.ShadowRefusal(scope=s, reason=r, message="") for s, r in decision.shadow]
        if grant and budget is not None:
            shadow.append(
                events.ShadowRefusal(
                    scope=budget.scope, reason=budget.reason, message=budget.message
                )
            )
        if shadow:
            message["shadow"] = shadow
        if decision.refused_for > 0:
            message["refused_for"] = decision.refused_for
            message["refused_scope"] = decision.refused_scope
        if decision.rule:
            message["rule"] = decision.rule
        return message

    def refusal(self, ticket: str, refusal: Refusal, quota: Quota) -> DecisionMessage:
        """A refusal before the engine charged anything, with the key scope's quota."""
        return {
            "type": events.DECISION,
            "ticket": ticket,
            "kind": "refuse",
            "lease": "",
            "reason": refusal.reason,
            "scope": refusal.scope,
            "retry_after": max(refusal.retry_after, 0.001),
            "waited": 0.0,
            "limit": quota.limit_per_minute,
            "remaining": quota.remaining,
            "reset": quota.reset_after,
            "max_wait": 0.0,
            "at": time.monotonic(),
            "limiter": self.instance,
            "message": refusal.message,
        }

    def started(self) -> dict[str, Any]:
        """To CONFIG_GROUP: this limiter serves (web processes hand back their leases)."""
        return {"type": events.LIMITER_STARTED, "limiter": self.instance}


def job_budget_answer(
    message: events.JobBudgetMessage, refused: JobRefused | None
) -> events.JobBudgetAnswer:
    """Whether a job's estimate is held, and if not, why, worded for the job."""
    answer: events.JobBudgetAnswer = {
        "type": events.JOB_BUDGET_ANSWER,
        "ticket": message["ticket"],
        "held": refused is None,
    }
    if refused is not None:
        answer["message"] = refused.message(message["job"], message["action"])
        answer["over_limit"] = refused.over_limit
        answer["retry_after"] = max(refused.exceeded.retry_after, 0.001)
    return answer


def pong(ticket: str, engine: Engine) -> dict[str, Any]:
    """A PING's answer: the limiter is up, and how much it holds."""
    return {
        "type": events.PONG,
        "ticket": ticket,
        "leases": len(engine.leases),
        "queued": len(engine.tickets),
        "scopes": len(engine.scopes),
    }


def ceiling_reset_done(model: str) -> dict[str, Any]:
    return {"type": events.CEILING_RESET_DONE, "model": model}
