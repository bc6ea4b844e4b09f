"""The organisation roles: Groups `admin`, `operator`, `auditor` with their model
permissions (dashboard/role_permissions.py)."""

from django.apps.registry import Apps
from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

from dashboard.role_permissions import group_permissions_sync


def groups_create(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    # Permissions are created after migrate (post_migrate); on a fresh database they do
    # not exist yet here, so create them first for every app migrated so far.
    for app_config in apps.get_app_configs():
        app_config.models_module = True  # type: ignore[assignment]  # create_permissions' guard
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    group_permissions_sync(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


def groups_delete(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    apps.get_model("auth", "Group").objects.filter(
        name__in=["admin", "operator", "auditor"]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0002_team_membership"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("limiter", "0008_profile_coalesce"),
        ("usage", "0002_job_usage"),
        ("alerts", "0002_webhook_rates"),
    ]

    operations = [migrations.RunPython(groups_create, groups_delete)]
