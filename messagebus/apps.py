from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import autodiscover_modules


class MessagebusConfig(AppConfig):
    name = "messagebus"
    verbose_name = "Message bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .observe.logs import ensure_a_handler

        ensure_a_handler()  # the bus's INFO lines visible in a project with no LOGGING

        autodiscover_modules("handlers")
        autodiscover_modules("processes")  # process managers (messagebus.sagas)
        autodiscover_modules("external")  # what each app publishes to other services
        if _runs_tasks():
            from .task_backend import runner

            runner.register()  # tasks run as deliveries to these two handlers
        setting_changed.connect(_reset_on_setting_change, dispatch_uid="messagebus-settings")


def _runs_tasks() -> bool:
    """Whether a ``TASKS`` backend is the outbox's (``messagebus.task_backend``)."""
    backends = getattr(settings, "TASKS", None) or {}
    return any(
        str(options.get("BACKEND", "")).startswith("messagebus.task_backend.")
        for options in backends.values()
    )


def _reset_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting == "MESSAGEBUS":
        from . import executors
        from .core import policy
        from .core.dependencies import dependencies
        from .delivery import breaker

        executors.reset()
        policy.reset()
        breaker.reset()
        dependencies.clear()
