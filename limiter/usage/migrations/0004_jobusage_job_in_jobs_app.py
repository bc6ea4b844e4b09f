"""A job's usage row points at the jobs app's Job (jobs 0001): the same table, so the
database is not touched."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0001_initial"),
        ("usage", "0003_exact_amounts"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="jobusage",
                    name="job",
                    field=models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="usage",
                        to="jobs.job",
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
