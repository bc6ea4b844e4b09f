"""The gate a ticket passes before the engine: its units in range, and its budgets not used
up. A call a budget covers is reserved at its estimate here, from its admission to its
usage report (limiter/usage/budgets.py `BudgetBook`, in memory): the bound holds whatever
order reports come in.

A refusal here is a `Refusal` (the codec words it as a decision, limiter/authority/codec.py);
the engine charges nothing for it. Thresholds a budget crosses are recorded and alerted
off the event loop (database writes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from asgiref.sync import sync_to_async

from limiter.authority.engine import INVALID_UNITS, units_valid
from limiter.protocol import events
from limiter.protocol.client import spawn
from limiter.usage.budgets import (
    BUDGET_EXCEEDED,
    NOT_BUDGETED,
    BudgetBook,
    Crossing,
    Exceeded,
    JobHold,
    JobRefused,
)
from limiter.usage.services import threshold_crossed

logger = logging.getLogger(__name__)

# The most US dollars one ticket may hold or report against a budget, as the engine's
# MAX_UNITS for tokens: anything beyond (or NaN, or infinite) is a bug upstream of here.
MAX_COST = 1e9
MSG_INVALID_UNITS = "The request's token or cost estimate is out of range: it was not admitted."


@dataclass(frozen=True, slots=True)
class Refusal:
    """A ticket refused before the engine charges any scope."""

    reason: str  # INVALID_UNITS | BUDGET_EXCEEDED
    scope: str  # "key" | "team": whose budget, or the key's units
    retry_after: float
    message: str


INVALID = Refusal(INVALID_UNITS, "key", 0.001, MSG_INVALID_UNITS)

# What `BudgetGate.fetch` reads: the budgets, their key's teams, the spend so far of those
# the book does not track yet, when, and (once) the jobs' holds.
Fetched = tuple[list[Any], dict[str, int], dict[int, float], datetime, Any]


def cost_valid(cost: object) -> bool:
    return isinstance(cost, int | float) and 0 <= cost <= MAX_COST


def ticket_units_valid(message: events.AcquireMessage) -> bool:
    """Whether a ticket's tokens and cost are numbers a budget and the engine can hold
    (see engine.units_valid). The gateway bounds what callers send; this is the wall."""
    return units_valid(message["tokens"] or 0.0) and cost_valid(message.get("cost") or 0.0)


class BudgetGate:
    def __init__(self, book: BudgetBook) -> None:
        self.book = book
        # Tickets admitted over a shadow budget, until their grant or refusal is answered.
        self._shadowed: dict[str, Refusal] = {}

    @classmethod
    def from_settings(cls) -> BudgetGate:
        from django.conf import settings

        return cls(
            BudgetBook(
                ZoneInfo(settings.SLUICE_USAGE_TIME_ZONE),
                settings.SLUICE_BUDGET_RESERVATION_TTL,
            )
        )

    def admit(self, message: events.AcquireMessage) -> Refusal | None:
        """An ACQUIRE's check: refused for units out of range (checked before a budget
        does arithmetic with them, where float(10**400) would raise and leave the caller
        unanswered), or for a budget used up; else reserved against its budgets."""
        if not ticket_units_valid(message):
            return INVALID
        # A merged embeddings request (CHARGE_ACCOUNT) is no one's call: each of its
        # callers was checked, and reserved, on its own ticket.
        # Files and jobs use no tokens: a job's estimate is held apart (`hold_jobs`).
        # A call that spends nothing (a list) is no budget's business.
        if (
            not self.book.states
            or message.get("charge") == events.CHARGE_ACCOUNT
            or message["endpoint"] in NOT_BUDGETED
            or message.get("spends") is False
        ):
            return None
        wall = datetime.now(UTC)
        _announce_crossings(self.book.expire(wall))
        exceeded = self.book.admit(
            message["ticket"],
            message["key"],
            message.get("model", ""),
            float(message["tokens"] or 0.0),
            float(message.get("cost") or 0.0),
            wall,
        )
        if exceeded is not None:
            return _refusal(exceeded)
        shadowed = self.book.check(message["key"], message.get("model", ""), wall, shadow=True)
        if shadowed is not None:  # admitted: its grant says what a shadow budget would do
            self._shadowed[message["ticket"]] = _refusal(shadowed)
        return None

    def shadowed(self, ticket: str) -> Refusal | None:
        """The shadow budget that would have refused this ticket, if any; asked once, when
        the ticket is answered (granted or refused)."""
        return self._shadowed.pop(ticket, None)

    def settle(self, message: events.UsageMessage) -> None:
        """A budgeted call ended: its reservation is settled with what it used (a job's
        usage, naming none, is charged as it is)."""
        tokens, cost = message.get("tokens") or 0.0, message.get("cost") or 0.0
        if not (units_valid(tokens) and cost_valid(cost)):
            # Out of range: settled at 0, so the reservation goes and the book stays finite.
            logger.error("usage report out of range for key %s: settled at 0", message["key"])
            tokens = cost = 0.0
        _announce_crossings(
            self.book.settle(
                message.get("reservation", ""),
                message["key"],
                message.get("model", ""),
                float(tokens),
                float(cost),
                datetime.now(UTC),
            )
        )

    def hold_job(self, message: events.JobBudgetMessage) -> JobRefused | None:
        """A job created or starting: hold its estimate against its budgets if it fits
        (BudgetBook.hold_jobs); why not, if it does not."""
        wall = datetime.now(UTC)
        _announce_crossings(self.book.expire(wall))
        holds = [
            JobHold(
                str(hold["job"]),
                str(hold.get("model") or ""),
                float(hold.get("tokens") or 0.0),
                float(hold.get("cost") or 0.0),
            )
            for hold in message["holds"]
        ]
        return self.book.hold_jobs(str(message["key"]), holds, wall)

    def drop(self, ticket: str) -> None:
        """Refused or cancelled before its grant: the ticket holds nothing."""
        self.book.drop(ticket)
        self._shadowed.pop(ticket, None)

    def covers(self, key_id: str) -> bool:
        return self.book.covers(key_id)

    def reserved(self, ticket: str) -> bool:
        return self.book.reserved(ticket)

    async def fetch(self) -> Fetched:
        """Read the budgets from the database, in a thread (for `load`)."""
        return await sync_to_async(_budgets_read, thread_sensitive=False)(self.book)

    def load(self, fetched: Fetched) -> None:
        self.book.load(*fetched)


def _refusal(exceeded: Exceeded) -> Refusal:
    return Refusal(
        BUDGET_EXCEEDED,
        "key" if exceeded.rule.key_id else "team",
        exceeded.retry_after,
        exceeded.message(),
    )


def _budgets_read(book: BudgetBook) -> Fetched:
    """The budgets, the spend so far of those the book does not track yet, and (once)
    the jobs' holds (off the event loop: database reads)."""
    from limiter.jobs.selectors import job_budget_holds
    from limiter.usage.selectors import budget_rules, budget_seed
    from limiter.usage.services import amount_unreadable

    now = datetime.now(UTC)
    rules, key_teams, unreadable = budget_rules()
    for budget in unreadable:  # left out of the rules: the others stay enforced
        amount_unreadable(kind="budget", row_id=budget.pk, team=budget.team)
    seed = budget_seed(book.untracked(rules, now), now, book.zone)
    # The jobs' holds, once: a limiter that starts takes them from the jobs stored with one.
    holds = None if book.jobs_restored else job_budget_holds()
    return rules, key_teams, seed, now, holds


def _announce_crossings(crossings: list[Crossing]) -> None:
    """Thresholds crossed: recorded and alerted off the event loop (database writes)."""
    for crossing in crossings:
        spawn(sync_to_async(_record_crossing, thread_sensitive=False)(crossing))


def _record_crossing(crossing: Crossing) -> None:
    try:
        threshold_crossed(crossing.rule, crossing.level, crossing.spent, crossing.period_start)
    except Exception:
        logger.exception("could not record budget %d's crossing", crossing.rule.id)
