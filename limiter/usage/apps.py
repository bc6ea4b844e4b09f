from django.apps import AppConfig


class UsageConfig(AppConfig):
    """Usage accounting, model prices and budgets: its own app (label `usage`) with its
    own migrations, so it never collides with the limiter app's migration numbers."""

    name = "limiter.usage"
    label = "usage"
    verbose_name = "Sluice usage and budgets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from limiter.usage import signals  # noqa: F401  (budget changes reach the limiter)
