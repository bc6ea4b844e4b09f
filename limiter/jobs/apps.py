from django.apps import AppConfig


class JobsConfig(AppConfig):
    """Fine-tunes and batches Sluice holds for teams, and who owns which file and model:
    its own app (label `jobs`). Its tables keep the names they had in the limiter app
    (`limiter_job`...), so a database made before keeps its rows."""

    name = "limiter.jobs"
    label = "jobs"
    verbose_name = "Sluice jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from limiter.jobs.signals import queued_jobs_follow_rotation
        from limiter.services import key_rotated

        key_rotated.connect(queued_jobs_follow_rotation, dispatch_uid="sluice-jobs-key-rotated")
