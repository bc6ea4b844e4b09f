from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "limiter.alerts"
    label = "alerts"
    verbose_name = "Sluice alerts"
    default_auto_field = "django.db.models.BigAutoField"
