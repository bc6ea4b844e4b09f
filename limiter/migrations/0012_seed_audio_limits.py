"""Default limits for the audio endpoint kinds in the default profile.

Together documents no separate limits for audio (together-api.md section 2), so these
are the images row's shape: 60 requests a minute, paced per second with a burst of 1.
Ops change them in the browser like any other row.
"""

from django.db import migrations

# endpoint: (requests_per_minute, burst)
AUDIO_DEFAULTS = {
    "audio_speech": (60, 1),
    "audio_transcription": (60, 1),
}


def seed(apps, schema_editor):
    LimitProfile = apps.get_model("limiter", "LimitProfile")
    EndpointLimit = apps.get_model("limiter", "EndpointLimit")
    profile = LimitProfile.objects.filter(name="default").first()
    if profile is None:  # ops renamed or removed it: nothing to add to
        return
    for endpoint, (rpm, burst) in AUDIO_DEFAULTS.items():
        EndpointLimit.objects.get_or_create(
            profile=profile,
            endpoint=endpoint,
            model="",
            defaults={
                "requests_per_minute": rpm,
                "burst": burst,
                "queue_depth": 100,
                "max_queue_wait_seconds": 30.0,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("limiter", "EndpointLimit").objects.filter(
        profile__name="default", endpoint__in=list(AUDIO_DEFAULTS), model=""
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("limiter", "0011_dedicated_models_managed_objects")]
    operations = [migrations.RunPython(seed, unseed)]
