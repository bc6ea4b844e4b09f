"""Fine-tunes' and batches' usage, recorded by the poller from what the sandbox upstream
reports once a job has ended: tokens and cost, once per job, however often it is seen."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from limiter.jobs.models import Job, JobState
from limiter.jobs.poller import Poller
from limiter.jobs.usage_collection import job_usage_collect
from limiter.protocol import events
from limiter.usage.models import JobUsage, UsageRollup
from limiter.usage.pricing import list_prices
from limiter.usage.services import prices_record
from sandbox.catalog import model_list
from sandbox.jobs import FINE_TUNE_NANODOLLARS_PER_TOKEN
from tests.jobs.conftest import MODEL, all_done, batch_lines, drive, upload
from tests.jobs.test_batches import create as create_batch
from tests.jobs.test_fine_tunes import create as create_fine_tune

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "meta-llama/Llama-3.3-70B-Instruct-Turbo"  # in the sandbox's list, with a price
TRAINING = b"".join(json.dumps({"text": f"example number {i}"}).encode() + b"\n" for i in range(5))


def recorded() -> bool:
    ended = Job.objects.filter(state=JobState.DONE, upstream_id__isnull=False).count()
    return ended > 0 and JobUsage.objects.count() == ended


def rollups(source: str) -> list[dict]:
    return list(
        UsageRollup.objects.filter(source=source)
        .order_by("model")
        .values(
            "team_name",
            "endpoint",
            "model",
            "status_class",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "input_price",
            "cost",
        )
    )


async def test_a_fine_tune_records_togethers_token_count_and_price_once(sandbox, make_key):
    await get_channel_layer().flush()  # other tests' jobs in this process told it too
    key = await sync_to_async(make_key)("tuners")
    training = upload(sandbox, TRAINING, "fine-tune")
    status, body = await create_fine_tune(key, training, n_epochs=2)
    assert status == 200, body

    await drive(Poller(), all_done)
    await drive(Poller(), lambda: recorded())

    job = await Job.objects.select_related("account", "team").aget(public_id=body["id"])
    upstream = job.upstream or {}
    # What the sandbox reported: two passes over the file's words, billed in nano-dollars.
    assert upstream["token_count"] == 2 * len(TRAINING.split()) > 0
    assert upstream["total_price"] == upstream["token_count"] * FINE_TUNE_NANODOLLARS_PER_TOKEN
    price = Decimal(upstream["total_price"]) / 1_000_000_000
    assert await sync_to_async(rollups)("fine_tune") == [
        {
            "team_name": "tuners",
            "endpoint": "fine_tunes",
            "model": MODEL,
            "status_class": "2xx",
            "requests": 1,
            "prompt_tokens": upstream["token_count"],
            "completion_tokens": 0,
            "total_tokens": upstream["token_count"],
            "input_price": None,
            "cost": price,
        }
    ]
    usage = await JobUsage.objects.aget(job=job)
    assert (usage.total_tokens, usage.cost, usage.note) == (upstream["token_count"], price, "")

    # Its budgets hear of it through the limiter, as a call's usage; the report names
    # the estimate the job held since its create, which it settles, and the job holds
    # nothing any more.
    message = await get_channel_layer().receive(events.LIMITER_CHANNEL)
    assert message == {
        "type": events.USAGE,
        "key": key.key_id,
        "model": MODEL,
        "tokens": float(upstream["token_count"]),
        "cost": float(price),
        "reservation": job.public_id,
    }
    await job.arefresh_from_db()
    assert job.budget_hold is None

    # Seen again (a second poller that read the job before the first recorded it, more
    # passes): nothing more is written.
    assert await job_usage_collect(job=job) is False
    for _ in range(3):
        await Poller().tick()
    assert await UsageRollup.objects.acount() == 1
    assert await JobUsage.objects.acount() == 1


async def test_a_batch_records_its_output_files_tokens_at_the_discounted_price(
    sandbox, make_key, settings
):
    settings.SLUICE_BATCH_PRICE_FACTOR = 0.5
    # The prices the web processes keep from Together's model list.
    await sync_to_async(prices_record)(found=list_prices(model_list([])))
    key = await sync_to_async(make_key)("batchers")
    lines = b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "body": {"model": CHAT, "messages": [{"role": "user", "content": "hi " * i}]},
            }
        ).encode()
        + b"\n"
        for i in range(7)
    )
    status, body = await create_batch(key, upload(sandbox, lines, "batch-api"), model_id=CHAT)
    assert status == 201, body

    await drive(Poller(), all_done)
    await drive(Poller(), lambda: recorded())

    # The output file as Together serves it: one answer with its usage a line.
    job = await Job.objects.aget(public_id=body["job"]["id"])
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(
            f"{sandbox.v1_url}/files/{(job.upstream or {})['output_file_id']}/content",
            headers={"authorization": "Bearer x"},
        )
    output = answer.content
    usages = [json.loads(line)["response"]["body"]["usage"] for line in output.splitlines()]
    assert len(usages) == 7
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    pricing = next(row["pricing"] for row in model_list([]) if row["id"] == CHAT)
    inp = Decimal(str(pricing["input"])) / 2
    out = Decimal(str(pricing["output"])) / 2
    rows = await sync_to_async(rollups)("batch")
    assert rows == [
        {
            "team_name": "batchers",
            "endpoint": "batches",
            "model": CHAT,
            "status_class": "2xx",
            "requests": 7,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "input_price": inp,
            "cost": (inp * prompt + out * completion) / 1_000_000,
        }
    ]
    assert rows[0]["cost"] > 0

    for _ in range(3):
        await Poller().tick()
    assert await UsageRollup.objects.acount() == 1


async def test_a_split_batch_records_each_part_once(sandbox, make_key):
    key = await sync_to_async(make_key)("splitters")
    status, body = await create_batch(
        key, upload(sandbox, batch_lines(150), "batch-api"), split=True
    )
    assert status == 201, body

    await drive(Poller(), all_done)
    await drive(Poller(), lambda: recorded())

    assert await JobUsage.objects.acount() == 2  # the parts; the group ran nothing itself
    requests = [row["requests"] for row in await sync_to_async(rollups)("batch")]
    assert sum(requests) == 150
