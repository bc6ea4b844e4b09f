from django.apps import AppConfig


class SandboxAppConfig(AppConfig):
    """The simulated Together, a development tool: an app only so that `manage.py sandbox`
    exists. Nothing of it is served unless SLUICE_SANDBOX is on (dashboard/asgi.py)."""

    name = "sandbox"
    label = "sandbox"
    verbose_name = "Sandbox upstream (simulated Together)"
