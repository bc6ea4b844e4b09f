"""The jobs app takes over the models of fine-tunes, batches and what teams own, which
the limiter app made (its migrations 0003, 0004, 0005 and 0009).

State only: the tables stay where they are, under the names they were made with
(`db_table`), so a database made before keeps every row. The limiter app's migration
0010 then drops the models from its own state, after the usage app's JobUsage points
here (usage 0004).
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

import limiter.jobs.models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("limiter", "0009_job_budget_hold"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Job",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("public_id", models.CharField(max_length=64, unique=True)),
                        (
                            "kind",
                            models.CharField(
                                choices=[("fine_tune", "Fine-tune"), ("batch", "Batch")],
                                max_length=10,
                            ),
                        ),
                        ("key_prefix", models.CharField(blank=True, max_length=32)),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("queued", "Queued in Sluice"),
                                    ("starting", "Starting"),
                                    ("running", "Running upstream"),
                                    ("done", "Ended"),
                                    ("group", "Split batch"),
                                ],
                                default="queued",
                                max_length=10,
                            ),
                        ),
                        ("upstream_status", models.CharField(blank=True, max_length=40)),
                        (
                            "upstream_id",
                            models.CharField(blank=True, max_length=100, null=True, unique=True),
                        ),
                        (
                            "marker",
                            models.CharField(
                                default=limiter.jobs.models.new_marker,
                                editable=False,
                                max_length=32,
                            ),
                        ),
                        ("request", models.JSONField(help_text="The body to send upstream.")),
                        (
                            "upstream",
                            models.JSONField(
                                blank=True, help_text="Together's last view of the job.", null=True
                            ),
                        ),
                        ("error", models.TextField(blank=True)),
                        ("request_count", models.PositiveIntegerField(blank=True, null=True)),
                        ("budget_hold", models.JSONField(blank=True, null=True)),
                        ("cancel_requested", models.BooleanField(default=False)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("claimed_at", models.DateTimeField(blank=True, null=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("not_before", models.DateTimeField(blank=True, null=True)),
                        ("next_poll_at", models.DateTimeField(blank=True, null=True)),
                        ("poll_failures", models.PositiveIntegerField(default=0)),
                        ("unchanged_polls", models.PositiveIntegerField(default=0)),
                        (
                            "account",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="jobs",
                                to="limiter.upstreamaccount",
                            ),
                        ),
                        (
                            "key",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="limiter.apikey",
                            ),
                        ),
                        (
                            "parent",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="parts",
                                to="jobs.job",
                            ),
                        ),
                        (
                            "team",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="jobs",
                                to="limiter.team",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "limiter_job",
                        "ordering": ["-created_at", "-id"],
                    },
                ),
                migrations.CreateModel(
                    name="JobEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("queued", "Queued in Sluice"),
                                    ("starting", "Starting"),
                                    ("running", "Running upstream"),
                                    ("done", "Ended"),
                                    ("group", "Split batch"),
                                ],
                                max_length=10,
                            ),
                        ),
                        ("upstream_status", models.CharField(blank=True, max_length=40)),
                        ("message", models.CharField(blank=True, max_length=300)),
                        (
                            "job",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="events",
                                to="jobs.job",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "limiter_jobevent",
                        "ordering": ["created_at", "id"],
                    },
                ),
                migrations.CreateModel(
                    name="TeamFile",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("file_id", models.CharField(max_length=100)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "team",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="files",
                                to="limiter.team",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "limiter_teamfile",
                    },
                ),
                migrations.CreateModel(
                    name="TeamModel",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("name", models.CharField(max_length=300, unique=True)),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("model", "Fine-tuned model"),
                                    ("checkpoint", "Checkpoint"),
                                ],
                                max_length=10,
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "job",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="jobs.job",
                            ),
                        ),
                        (
                            "team",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="models",
                                to="limiter.team",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "limiter_teammodel",
                        "ordering": ["name"],
                    },
                ),
                migrations.AddIndex(
                    model_name="job",
                    index=models.Index(
                        fields=["account", "kind", "state", "created_at"], name="job_account_queue"
                    ),
                ),
                migrations.AddIndex(
                    model_name="job",
                    index=models.Index(fields=["team", "kind", "state"], name="job_team_state"),
                ),
                migrations.AddIndex(
                    model_name="job",
                    index=models.Index(fields=["state", "next_poll_at"], name="job_due_poll"),
                ),
                migrations.AddIndex(
                    model_name="job",
                    index=models.Index(
                        fields=["team", "kind", "-created_at"], name="job_team_list"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="teamfile",
                    constraint=models.UniqueConstraint(
                        fields=("team", "file_id"), name="one_owner_row_per_file"
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
