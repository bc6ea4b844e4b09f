"""What a web process tells the limiter about what it holds, fire and forget.

Leases go back (`release`), are kept alive (`renew`), a queued ticket may wait longer
(`extend`) or is given up (`cancel`), a budgeted call's usage settles its reservation
(`report_usage`, `unreserve`). Each is sent in the background and retried through a
channel-layer outage (Transport.send_later): a lost one would hold a lease or a budget
until it expires.

The courier also keeps the leases this process holds: a limiter that starts meanwhile
knows nothing of them, so each is handed to it again (`adopt_all`, events.ADOPT).
"""

from __future__ import annotations

from typing import Any

from limiter.protocol import events
from limiter.protocol.events import DecisionMessage
from limiter.protocol.transport import Transport


class LeaseCourier:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.held: dict[str, events.AdoptMessage] = {}  # lease -> how to hand it over again

    def hold(self, adopt: events.AdoptMessage) -> None:
        """This process holds `adopt["lease"]` until it is released."""
        if adopt["lease"]:
            self.held[adopt["lease"]] = adopt

    def forget(self, lease: str) -> None:
        """The lease goes back some other way (a ticket that replaces it, REACQUIRE)."""
        self.held.pop(lease, None)

    def adopt_all(self) -> None:
        """A limiter started: hand it every lease this process holds."""
        for adopt in list(self.held.values()):
            self._send(dict(adopt))

    def release(self, lease: str, tokens_used: float | None, *, unused: bool = False) -> None:
        """Hand a lease back. `unused`: its work never went upstream, so its request
        charge comes back too (events.ReleaseMessage)."""
        if not lease:
            return  # the grant needed no lease (no concurrency cap, no token estimate)
        self.forget(lease)
        message: events.ReleaseMessage = {
            "type": events.RELEASE,
            "lease": lease,
            "tokens_used": tokens_used,
        }
        if unused:
            message["unused"] = True
        self._send(dict(message))

    def hand_back(self, decision: DecisionMessage) -> None:
        """A grant nobody will use (its caller went away): its lease and reservation."""
        self.release(decision.get("lease", ""), None)
        self.unreserve(decision.get("reservation", ""))

    def renew(self, lease: str) -> None:
        """Keep a lease whose request still runs (a stream longer than SLUICE_LEASE_TTL)."""
        if lease:
            renew: events.RenewMessage = {"type": events.RENEW, "lease": lease}
            self._send(dict(renew))

    def extend(self, ticket: str, max_wait: float) -> None:
        """A queued ticket may wait longer (Patience.extend)."""
        message: events.ExtendMessage = {
            "type": events.EXTEND,
            "ticket": ticket,
            "max_wait": max_wait,
        }
        self._send(dict(message))

    def cancel(self, ticket: str) -> None:
        """The ticket's caller gave up: the limiter drops it from its queue."""
        self._send({"type": events.CANCEL, "ticket": ticket})

    def report_usage(
        self, *, key_id: str, model: str, tokens: float, cost: float, reservation: str = ""
    ) -> None:
        """A budgeted call ended: tell the limiter what it used, settling its reservation
        (a lost report leaves the reservation to expire at its estimate)."""
        message: events.UsageMessage = {
            "type": events.USAGE,
            "key": key_id,
            "model": model,
            "tokens": tokens,
            "cost": cost,
        }
        if reservation:
            message["reservation"] = reservation
        self._send(dict(message))

    def unreserve(self, reservation: str) -> None:
        """A grant that holds a reservation was not used (handed back, or its call never
        went upstream): settle the reservation at 0, so it stops holding the budget."""
        if reservation:
            self.report_usage(key_id="", model="", tokens=0.0, cost=0.0, reservation=reservation)

    def _send(self, message: dict[str, Any]) -> None:
        self.transport.send_later(message)
