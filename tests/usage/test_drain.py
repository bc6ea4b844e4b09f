"""The usage rollups survive a graceful shutdown: SIGTERM's drain writes what the
periodic flush had not (here it never runs: its interval is an hour)."""

from __future__ import annotations

import json
import signal

import httpx

from tests.servers import SluiceServer

CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def test_sigterm_drain_writes_the_unflushed_usage(tmp_path):
    with SluiceServer(tmp_path, env={"SLUICE_USAGE_FLUSH_SECONDS": "3600"}) as server:
        key = server.issue_key("drained")
        totals = 0
        with httpx.Client(
            base_url=f"{server.url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as v1:
            for _ in range(3):
                answer = v1.post(
                    "/chat/completions",
                    json={"model": CHAT, "messages": [{"role": "user", "content": "hi there"}]},
                )
                totals += answer.json()["usage"]["total_tokens"]
        before = server.python(
            "from limiter.usage.models import UsageRollup\nprint(UsageRollup.objects.count())"
        )
        assert before.strip() == "0"  # nothing written yet: the flush interval is an hour
        process = server.processes[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        after = json.loads(
            server.python(
                "import json\nfrom django.db.models import Sum\n"
                "from limiter.usage.models import UsageRollup\n"
                "print(json.dumps(UsageRollup.objects.filter(team_name='drained')"
                ".aggregate(r=Sum('requests'), t=Sum('total_tokens'))))"
            )
        )
        assert after == {"r": 3, "t": totals}
