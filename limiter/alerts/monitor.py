"""The request path's side of alerts: counters in memory, nothing else.

The gateway and the upstream client call these on every refusal or error answer; they
cost a dict increment. The alerts loop (delivery.py) takes the counts every
SLUICE_ALERT_CHECK_INTERVAL, adds them to the shared per-minute `Signal` rows and
judges the rates there, so a rate holds across all web processes, not per process.
"""

from __future__ import annotations

from collections import Counter

TEAM_429 = "team_429"  # subject: the team's id
UPSTREAM_429 = "upstream_429"  # subject: the upstream account's name
UPSTREAM_503 = "upstream_503"
LIMITER_UNAVAILABLE = "limiter_unavailable"  # subject: empty

WATCHED_UPSTREAM = {429: UPSTREAM_429, 503: UPSTREAM_503}


class Monitor:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def team_refused(self, team_id: int | None) -> None:
        """Sluice refused one of this team's calls with a 429."""
        if team_id is not None:
            self._counts[(TEAM_429, str(team_id))] += 1

    def upstream_answered(self, account: str, status: int) -> None:
        """Together answered `status`; only 429 and 503 are counted."""
        kind = WATCHED_UPSTREAM.get(status)
        if kind is not None:
            self._counts[(kind, account)] += 1

    def limiter_unavailable(self) -> None:
        self._counts[(LIMITER_UNAVAILABLE, "")] += 1

    def take(self) -> Counter[tuple[str, str]]:
        """The counts since the last call, and start again from zero."""
        counts, self._counts = self._counts, Counter()
        return counts

    def put_back(self, counts: Counter[tuple[str, str]]) -> None:
        """Counts that could not be written (the database is down): kept for next time."""
        self._counts.update(counts)


monitor = Monitor()
