"""Seed the default limit profile from the seed document (../shared/seed/), and the
default upstream account that uses it as its ceiling.

chat 600/min paced at 500, embeddings 300/min paced at 250, images 60/min, 3 concurrent
fine-tune jobs, batches of at most 100 requests and 10 at a time.
"""

from django.db import migrations

# endpoint: (requests_per_minute, pace_per_minute, burst, max_concurrent, max_batch_requests)
# Bursts are 1: Together enforces per second, and a GCRA bucket lets through at most
# burst + rate x 1 s in any second, so at 500/min paced that is 9 against a limit of 10.
DEFAULTS = {
    "chat": (600, 500, 1, None, None),
    "completions": (600, 500, 1, None, None),
    "embeddings": (300, 250, 1, None, None),
    "images": (60, None, 1, None, None),
    "rerank": (300, 250, 1, None, None),
    "fine_tunes": (60, None, 1, 3, None),
    "batches": (60, None, 1, 10, 100),
    "files": (60, None, 2, None, None),
}


def seed(apps, schema_editor):
    LimitProfile = apps.get_model("limiter", "LimitProfile")
    EndpointLimit = apps.get_model("limiter", "EndpointLimit")
    UpstreamAccount = apps.get_model("limiter", "UpstreamAccount")
    profile, _ = LimitProfile.objects.get_or_create(
        name="default",
        defaults={
            "description": (
                "The seed's table: Together's documented per-key limits, paced with headroom."
            )
        },
    )
    for endpoint, (rpm, pace, burst, concurrent, batch) in DEFAULTS.items():
        EndpointLimit.objects.get_or_create(
            profile=profile,
            endpoint=endpoint,
            defaults={
                "requests_per_minute": rpm,
                "pace_per_minute": pace,
                "burst": burst,
                "max_concurrent": concurrent,
                "max_batch_requests": batch,
                "queue_depth": 100,
                "max_queue_wait_seconds": 30.0,
            },
        )
    UpstreamAccount.objects.get_or_create(
        name="together", defaults={"profile": profile, "is_default": True}
    )


def unseed(apps, schema_editor):
    apps.get_model("limiter", "UpstreamAccount").objects.filter(name="together").delete()
    apps.get_model("limiter", "LimitProfile").objects.filter(name="default").delete()


class Migration(migrations.Migration):
    dependencies = [("limiter", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
