"""The jobs models leave the limiter app's state: the jobs app holds them since its
migration 0001, on the same tables, and the usage app's JobUsage points there (usage
0004). Nothing in the database moves but the content types, renamed to the jobs app, so
the permissions granted on them stay granted.
"""

from django.db import migrations

MODELS = ("job", "jobevent", "teamfile", "teammodel")


def _content_types_move(apps, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in MODELS:
        old = ContentType.objects.filter(app_label=source, model=model).first()
        if old is None:
            continue
        new = ContentType.objects.filter(app_label=target, model=model).first()
        if new is None:
            old.app_label = target
            old.save(update_fields=["app_label"])
        else:
            # Made for both apps (a migrate that stopped between the two states): what
            # was granted on the old one is granted on the new one's twin.
            _permissions_merge(apps, old, new)
            old.delete()


def _permissions_merge(apps, old, new) -> None:
    Permission = apps.get_model("auth", "Permission")
    for permission in Permission.objects.filter(content_type=old):
        twin = Permission.objects.filter(content_type=new, codename=permission.codename).first()
        if twin is None:
            permission.content_type = new
            permission.save(update_fields=["content_type"])
            continue
        for group in permission.group_set.all():
            group.permissions.add(twin)
        for user in permission.user_set.all():
            user.user_permissions.add(twin)


def content_types_to_jobs(apps, schema_editor):
    _content_types_move(apps, "limiter", "jobs")


def content_types_to_limiter(apps, schema_editor):
    _content_types_move(apps, "jobs", "limiter")


class Migration(migrations.Migration):
    dependencies = [
        ("limiter", "0009_job_budget_hold"),
        ("jobs", "0001_initial"),
        ("usage", "0004_jobusage_job_in_jobs_app"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="TeamModel"),
                migrations.DeleteModel(name="TeamFile"),
                migrations.DeleteModel(name="JobEvent"),
                migrations.DeleteModel(name="Job"),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to_jobs, content_types_to_limiter),
    ]
