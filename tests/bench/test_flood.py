"""bench/flood.py's table, from figures made up here (no servers: the run itself is
`python -m bench.flood`): a column a deployment, each target judged for each deployment
that refuses locally."""

from __future__ import annotations

from bench.flood import DEPLOYMENTS, HEADINGS, Calls, Deployment, log_line, markdown


def deployment(label: str, cpu_ms: float, beside_p50: float) -> Deployment:
    return Deployment(
        label,
        alone=Calls({200: 40}, 25.0),
        beside=Calls({200: 40}, beside_p50),
        flood_statuses={"200": 10, "429": 1000},
        cpu_ms_per_refusal=cpu_ms,
        decisions=60,
        asked=60,
        local=940,
        held=500 if label == "held" else 0,
        held_seconds=400.0 if label == "held" else 0.0,
        waited=70 if label == "held" else 0,
        refusals_per_s=100.0,
        storm_flood={429: 9000},
        storm_neighbour=Calls({200: 20}, 30.0),
        storm_rate=1900.0,
        turn_ms=20.0,
        late_share=0.1,
    )


def test_the_table_has_a_column_a_deployment_and_judges_each_local_one() -> None:
    figures = {"asked": (1.4, 90.0), "local": (0.3, 80.0), "held": (0.4, 27.0)}
    results = [deployment(label, *figures.get(label, (0.6, 26.0))) for label, *_ in DEPLOYMENTS]
    table = markdown(results)
    lines = table.splitlines()
    assert (
        lines[0] == "| measure | " + " | ".join(HEADINGS[r.label] for r in results) + " | target |"
    )
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert all(line.count("|") == len(results) + 3 for line in rows.values())
    cpu = rows["gateway CPU per refused call (48 workers, 60/min key)"]
    assert "local met, held met, local-daphne **missed**" in cpu
    p50 = rows["neighbour p50 alone / beside the flood"]
    assert "local **missed**, held met, local-daphne met" in p50
    assert "500 (800 ms)" in rows["of those refused locally: held first (mean hold)"]
    assert "| 100 |" in rows["flood refusals a second"]
    waited = rows["flood calls that waited on another call's ask (a held key's herd)"]
    assert "| 0 | 0 | 70 | 0 |" in waited


def test_each_deployment_is_logged_with_its_must_shows() -> None:
    line = log_line(deployment("held", 0.4, 27.0))
    assert line == (
        "held: 0.400 ms CPU per refused call, 0.000 limiter messages per local refusal, "
        "100 refusals/s, neighbour p50 25.0 -> 27.0 ms (100.0% answered); storm: neighbour "
        "100.0% answered, 0 x 503"
    )
