from django.apps import AppConfig


class LimiterConfig(AppConfig):
    name = "limiter"
    verbose_name = "Sluice limiter"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from limiter import signals  # noqa: F401  (connects the config-change broadcasts)
