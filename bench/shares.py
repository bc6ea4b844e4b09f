"""Issue 21's scenario: a contended ceiling shared with a guaranteed share and priorities.

`python -m bench.shares` runs it and bench/shares_moving.py's moving ceiling (about 22
minutes); figures beside a same-run baseline with shares off, on a shared, noisy machine.
The sandbox caps the model at 300 a minute (its dynamic mode with a per-model cap) and
answers in 20 ms; Sluice's account profile caps it at 300 a minute too, and Sluice paces at
what it learns from the sandbox's headers less its margin (adaptive: from
SLUICE_UPSTREAM_MARGIN, 10%, down to 2% while clean, limiter/authority/ceilings.py).

Each scenario but the background one runs against both of the sandbox's ways of enforcing
a per-second limit (sandbox/dynamic.py): the strict 1 s sliding window, and a one-second
cushion (GCRA), as Together's "burst cushion" suggests. Which one Together runs is not
documented, so both are reported.

Team prod (share 60%, critical) asks 150 a minute open loop, stops for 30 s and returns;
team dev floods (8 a second, open loop: more than the ceiling, so it always waits); team
exp (standard, weight 1, as dev) asks 100 a minute. Measured from the answers' own
headers (x-sluice-queued-ms: a grant's moment is its due moment plus its queue wait):
prod's 200s and queue waits, the grants a second against the model's 300 a minute while
anyone waits, dev's and exp's split of what prod leaves, how soon dev and exp take prod's
part when it stops, prod's first wait when it comes back, and Together's (the sandbox's)
429s.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.dynamic import UPSTREAM_LATENCY_MS, Upstream, run_openloop
from bench.latency import MODEL, percentile
from bench.procs import manage
from bench.servers import Ceiling, Sandbox, Sluice
from bench.shares_moving import MOVING_ROWS, moving_cells, moving_one, seconds_429

CAP = 300  # the model's limit a minute, at the sandbox and in the account's profile
LIMITS: dict[str, Any] = {
    "floor_per_minute": CAP,
    "cap_per_minute": CAP,
    "window_seconds": 60.0,
    "model_caps": {MODEL: CAP},
}
CEILING = Ceiling(account_rpm=CAP, account_pace=CAP, key_max_wait=30.0)
ENFORCEMENTS = ("window", "cushion")  # the sandbox's per-second enforcement (DynamicLimits)
SECONDS = 100.0
PROD_OFF = (40.0, 70.0)  # prod stops for 30 s
STEADY = (10.0, 40.0)  # all three asking, after the first seconds
PROD_RATE, DEV_RATE, EXP_RATE = 150 / 60, 8.0, 100 / 60
SHARE = 0.6
BACKGROUND_SECONDS = 60.0
APP_RATE = 3.0  # 180 a minute: two thirds of the ceiling in force (270)


def provision_background(priorities: bool) -> None:
    """Teams app (standard) and batch (background, with `priorities`) on the default
    account; their keys as JSON."""
    from limiter.models import LimitProfile, Team, UpstreamAccount
    from limiter.services import key_issue

    account = UpstreamAccount.objects.get(is_default=True)
    profile = LimitProfile.objects.get(name="bench-burst")
    keys = {}
    for name in ("app", "batch"):
        team, _ = Team.objects.update_or_create(
            name=f"bench-{name}", defaults={"profile": profile, "upstream": account}
        )
        if priorities and name == "batch":
            team.priority = "background"
            team.save()
        keys[name] = key_issue(team=team).secret
    print(json.dumps(keys))


def provision(shares: bool) -> None:
    """Inside the deployment's `manage.py shell`: teams prod, dev and exp on the default
    account with the bench's patient key profile; with `shares`, prod's 60% and critical.
    Prints their keys as JSON."""
    from limiter.models import LimitProfile, Share, Team, UpstreamAccount
    from limiter.services import key_issue

    account = UpstreamAccount.objects.get(is_default=True)
    profile = LimitProfile.objects.get(name="bench-burst")
    keys = {}
    for name in ("prod", "dev", "exp"):
        team, _ = Team.objects.update_or_create(
            name=f"bench-{name}", defaults={"profile": profile, "upstream": account}
        )
        if shares and name == "prod":
            team.priority = "critical"
            team.save()
            Share.objects.create(account=account, team=team, endpoint="chat", fraction=SHARE)
        keys[name] = key_issue(team=team).secret
    print(json.dumps(keys))


def _streams(sluice: Sluice, keys: dict[str, str]) -> list[dict[str, Any]]:
    url = f"{sluice.urls[0]}/v1/chat/completions"

    def stream(name: str, rate: float, delay: float, duration: float) -> dict[str, Any]:
        return {
            "name": name,
            "url": url,
            "key": keys[name],
            "model": MODEL,
            "rate": rate,
            "duration": duration,
            "delay": delay,
        }

    return [
        stream("prod", PROD_RATE, 0.0, PROD_OFF[0]),
        stream("prod", PROD_RATE, PROD_OFF[1], SECONDS - PROD_OFF[1]),
        stream("dev", DEV_RATE, 0.0, SECONDS),
        stream("exp", EXP_RATE, 0.0, SECONDS),
    ]


def _granted(records: list[dict[str, Any]], name: str | None, start: float, end: float) -> int:
    """200s granted (due moment plus queue wait) in [start, end)."""
    return sum(
        1
        for r in records
        if r["status"] == 200
        and (name is None or r["stream"] == name)
        and start <= r["at"] + r.get("queued_ms", 0) / 1000 < end
    )


def figures(result: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    records = result["requests"]
    rate = CAP / 60
    prod = [r for r in records if r["stream"] == "prod"]
    steady_prod = [r for r in prod if STEADY[0] <= r["at"] < STEADY[1]]
    waits = [r.get("queued_ms", 0) for r in steady_prod if r["status"] == 200]
    dev = _granted(records, "dev", *STEADY)
    exp = _granted(records, "exp", *STEADY)
    returned = min((r for r in prod if r["at"] >= PROD_OFF[1]), key=lambda r: r["at"])
    borrow = (PROD_OFF[0] + 5.0, PROD_OFF[1])
    upstream = Upstream.of(stats, MODEL)
    return {
        "prod_200": sum(r["status"] == 200 for r in prod) / len(prod),
        "prod_p95_wait_ms": percentile(sorted(waits), 95) if waits else None,
        "steady_use": _granted(records, None, *STEADY) / (rate * (STEADY[1] - STEADY[0])),
        "exp_over_dev": exp / dev if dev else None,
        "dev_exp_use_prod_off": _granted(records, None, *borrow) / (rate * (borrow[1] - borrow[0])),
        "prod_return_wait_ms": returned.get("queued_ms", 0) if returned["status"] == 200 else None,
        "return_target_ms": 1000 / (SHARE * rate) + 50,
        "upstream_429": upstream.status_429,
        "upstream_sent": upstream.sent,
        "upstream_429_at": seconds_429(result, stats),
        "statuses": {
            name: {
                str(s): sum(1 for r in records if r["stream"] == name and r["status"] == s)
                for s in sorted({r["status"] for r in records})
            }
            for name in ("prod", "dev", "exp")
        },
    }


def run_one(sandbox: Sandbox, tmp: Path, shares: bool, enforcement: str) -> dict[str, Any]:
    tmp.mkdir()
    with Sluice(tmp, sandbox, CEILING) as sluice:
        sandbox.control({"reset": True, "dynamic": {**LIMITS, "enforcement": enforcement}})
        out = manage(
            sluice.env,
            "shell",
            "-v",
            "0",
            "-c",
            f"from bench.shares import provision; provision({shares!r})",
        )
        keys = json.loads(out.strip().splitlines()[-1])
        result = run_openloop(_streams(sluice, keys), SECONDS)
        stats = sandbox.stats()
    return figures(result, stats)


def background_one(sandbox: Sandbox, tmp: Path, priorities: bool) -> dict[str, Any]:
    """A standard key asking 180 a minute beside a background key flooding (8 a second,
    its queue up to 30 s long): the background key should get only what the standard one
    leaves, and all of it."""
    tmp.mkdir()
    with Sluice(tmp, sandbox, CEILING) as sluice:
        sandbox.control({"reset": True, "dynamic": LIMITS})
        command = (
            f"from bench.shares import provision_background; provision_background({priorities!r})"
        )
        out = manage(sluice.env, "shell", "-v", "0", "-c", command)
        keys = json.loads(out.strip().splitlines()[-1])
        url = f"{sluice.urls[0]}/v1/chat/completions"
        streams = [
            {
                "name": name,
                "url": url,
                "key": keys[name],
                "model": MODEL,
                "rate": rate,
                "duration": BACKGROUND_SECONDS,
            }
            for name, rate in (("app", APP_RATE), ("batch", DEV_RATE))
        ]
        result = run_openloop(streams, BACKGROUND_SECONDS)
        stats = sandbox.stats()
    records, rate = result["requests"], CAP / 60
    window = (10.0, BACKGROUND_SECONDS)
    app = [r for r in records if r["stream"] == "app" and window[0] <= r["at"] < window[1]]
    waits = sorted(r.get("queued_ms", 0) for r in app if r["status"] == 200)
    span = rate * (window[1] - window[0])
    return {
        "app_200": sum(r["status"] == 200 for r in app) / len(app),
        "app_p95_wait_ms": percentile(waits, 95) if waits else None,
        "batch_use": _granted(records, "batch", *window) / span,
        "total_use": _granted(records, None, *window) / span,
        "upstream_429": Upstream.of(stats, MODEL).status_429,
    }


def run(log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Each run on a fresh deployment, shares on then the baseline with them off, against
    each of the sandbox's enforcements (the background scenario against the window only)."""
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-shares-") as tmp:
        with Sandbox(Path(tmp), UPSTREAM_LATENCY_MS) as sandbox:
            for enforcement in ENFORCEMENTS:
                for shares, name in ((True, "shares on"), (False, "shares off (baseline)")):
                    label, where = f"{enforcement}: {name}", Path(tmp) / f"{enforcement}-{shares}"
                    where.mkdir()
                    log(f"shares: prod 60% critical, dev and exp standard; {label}")
                    result = run_one(sandbox, where / "steady", shares, enforcement)
                    log(f"shares: the same teams with the sandbox's ceiling moving; {label}")
                    result["moving"] = moving_one(sandbox, where / "moving", shares, enforcement)
                    if enforcement == "window":
                        log(f"shares: a background key beside a standard one; {label}")
                        result["background"] = background_one(sandbox, where / "bg", shares)
                    results[label] = result
    return results


ROWS = [
    ("prod answered 200", "prod_200", lambda v: f"{v:.1%}"),
    ("prod p95 queue wait (steady)", "prod_p95_wait_ms", lambda v: f"{v:.0f} ms"),
    (
        "grants / model's 300 a min while all wait (target >= 95%)",
        "steady_use",
        lambda v: f"{v:.1%}",
    ),
    ("exp's grants / dev's (weights 1:1)", "exp_over_dev", lambda v: f"{v:.2f}"),
    (
        "dev+exp grants / 300 a min, prod off (from 5 s)",
        "dev_exp_use_prod_off",
        lambda v: f"{v:.1%}",
    ),
    ("prod's first wait on its return", "prod_return_wait_ms", lambda v: f"{v:.0f} ms"),
    ("Together's (sandbox's) 429s / sent", "upstream_429", None),
]


BACKGROUND_ROWS = [
    ("app (standard, 180/min) answered 200", "app_200", lambda v: f"{v:.1%}"),
    ("app p95 queue wait", "app_p95_wait_ms", lambda v: f"{v:.0f} ms"),
    ("batch (background flood) grants / 300 a min", "batch_use", lambda v: f"{v:.1%}"),
    ("app+batch grants / 300 a min", "total_use", lambda v: f"{v:.1%}"),
    ("Together's 429s (background run)", "upstream_429", lambda v: f"{v}"),
]


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = [f"| | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for label, field, shown in ROWS:
        cells = []
        for name in names:
            value = results[name][field]
            if field == "upstream_429":
                cells.append(f"{value} / {results[name]['upstream_sent']}")
            else:
                cells.append("—" if value is None else shown(value))  # type: ignore[misc]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    for label, field, shown in BACKGROUND_ROWS:
        cells = []
        for name in names:
            value = results[name].get("background", {}).get(field)
            cells.append("—" if value is None else shown(value))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    for label, field in MOVING_ROWS:
        cells = [
            moving_cells(results[name]["moving"], field) if "moving" in results[name] else "—"
            for name in names
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    target = results[names[0]]["return_target_ms"]
    lines.append(
        f"\nTarget for prod's return: one grant interval of its share plus 50 ms = "
        f"{target:.0f} ms. Sluice paces the model at what it learned less its margin, which "
        "starts at 10% (270 a minute) and narrows to 2% (294) while Together is clean; a 429 "
        "that states the limit doubles it. window: the sandbox's strict 1 s sliding window; "
        "cushion: its one-second bucket (GCRA). One run each, on a shared 2-core machine: the "
        "figures are noisy."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    results = run(lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    json.dump(results, sys.stdout, indent=2)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
