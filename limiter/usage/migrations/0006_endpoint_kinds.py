# Every endpoint kind of issue 23 (audio, videos, evaluations, organisation-level), in one place.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0005_shadow_budgets"),
    ]

    operations = [
        migrations.AlterField(
            model_name="usagerollup",
            name="endpoint",
            field=models.CharField(
                choices=[
                    ("chat", "Chat completions"),
                    ("completions", "Text completions"),
                    ("embeddings", "Embeddings"),
                    ("images", "Image generation"),
                    ("rerank", "Rerank"),
                    ("fine_tunes", "Fine-tune jobs"),
                    ("batches", "Batch inference"),
                    ("files", "Files"),
                    ("audio_speech", "Audio speech (text to speech)"),
                    ("audio_transcription", "Audio transcription and translation"),
                    ("videos", "Video jobs"),
                    ("evaluations", "Evaluations"),
                    ("org_endpoints", "Dedicated endpoints (organisation)"),
                    ("org_models", "Model uploads (organisation)"),
                    ("org_training", "Post-training and shaping (organisation)"),
                    ("org_deployments", "Deployments and their queue (organisation)"),
                    ("org_compute", "GPU clusters (organisation)"),
                    ("org_billing", "Billing usage (organisation)"),
                    ("org_projects", "Projects (organisation)"),
                ],
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="usagerollup",
            name="source",
            field=models.CharField(
                choices=[
                    ("online", "Online inference"),
                    ("batch", "Batch inference"),
                    ("fine_tune", "Fine-tuning"),
                    ("video", "Video generation"),
                ],
                default="online",
                max_length=10,
            ),
        ),
    ]
