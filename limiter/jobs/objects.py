"""Which team made which object Sluice forwards calls about but does not hold as a job
(an evaluation): recorded from Together's answer to the team's create, read to answer
another team's id as an unknown one (see models.TeamObject)."""

from __future__ import annotations

from limiter.jobs.models import TeamObject


def object_record(*, team_id: int, kind: str, object_id: str) -> None:
    """Remember that `team_id` made `object_id`; an id already recorded keeps its owner."""
    TeamObject.objects.get_or_create(kind=kind, object_id=object_id, defaults={"team_id": team_id})


def object_owned(*, team_id: int, kind: str, object_id: str) -> bool:
    return TeamObject.objects.filter(team_id=team_id, kind=kind, object_id=object_id).exists()


def object_ids_for_team(*, team_id: int, kind: str) -> set[str]:
    return set(
        TeamObject.objects.filter(team_id=team_id, kind=kind).values_list("object_id", flat=True)
    )
