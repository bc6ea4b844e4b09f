"""The code interpreter's row in the default profile (limiter/gateway/tci.py). Together
documents no rate limit for it (it bills $0.03 a session); the row paces a key's calls
like the other forwarded kinds (60 a minute, paced per second with a burst of 1, queued
up to 30 s). Ops change it in the browser."""

from django.db import migrations

ENDPOINT = "code_interpreter"


def seed(apps, schema_editor):
    EndpointLimit = apps.get_model("limiter", "EndpointLimit")
    LimitProfile = apps.get_model("limiter", "LimitProfile")
    profile = LimitProfile.objects.filter(name="default").first()
    if profile is None:
        return
    EndpointLimit.objects.get_or_create(
        profile=profile,
        endpoint=ENDPOINT,
        model="",
        defaults={
            "requests_per_minute": 60,
            "burst": 1,
            "queue_depth": 100,
            "max_queue_wait_seconds": 30.0,
        },
    )


def unseed(apps, schema_editor):
    apps.get_model("limiter", "EndpointLimit").objects.filter(
        profile__name="default", endpoint=ENDPOINT, model=""
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("limiter", "0017_code_interpreter_kind"),
    ]

    operations = [migrations.RunPython(seed, unseed)]
