from django.apps import AppConfig
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
        autodiscover_modules("external")  # what each app publishes to other services
        setting_changed.connect(_reset_on_setting_change, dispatch_uid="messagebus-settings")


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
