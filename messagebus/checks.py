"""System checks (``manage.py check``) for the wiring of messages and handlers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.apps import AppConfig, apps
from django.core import checks
from django.utils.module_loading import import_string

from . import conf
from .dependencies import dependencies
from .exceptions import MessageEncodeError
from .messages import Command, Message, message_classes, message_type_name
from .registry import registry
from .serialization import check_serializable


@checks.register("messagebus")
def check_settings(
    app_configs: Iterable[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    errors = []
    raw = getattr(conf.django_settings, "MESSAGEBUS", {})
    if not isinstance(raw, dict):
        return [_setting_error("MESSAGEBUS must be a dict", raw)]
    for key in sorted(set(raw) - set(conf.DEFAULTS)):
        errors.append(
            _setting_error(
                f"MESSAGEBUS has an unknown key {key!r}",
                key,
                hint=f"Known keys: {', '.join(conf.DEFAULTS)}.",
            )
        )
    executor = conf.settings.EXECUTOR
    if executor not in ("inline", "worker"):
        try:
            import_string(executor)
        except ImportError as exc:
            errors.append(
                _setting_error(
                    f"MESSAGEBUS['EXECUTOR'] = {executor!r} is not 'inline', 'worker' or an importable class: {exc}",
                    executor,
                )
            )
    deps = conf.settings.DEPENDENCIES
    if not isinstance(deps, dict):
        errors.append(
            _setting_error("MESSAGEBUS['DEPENDENCIES'] must map names to dotted paths", deps)
        )
    else:
        for name, path in deps.items():
            try:
                import_string(path)
            except ImportError as exc:
                errors.append(
                    _setting_error(
                        f"MESSAGEBUS['DEPENDENCIES'][{name!r}] cannot be imported: {exc}", name
                    )
                )
    for key in ("RETRY_ATTEMPTS", "MAX_DELIVERIES"):
        value = getattr(conf.settings, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(
                _setting_error(
                    f"MESSAGEBUS[{key!r}] must be a whole number of at least 1, not {value!r}", key
                )
            )
    for key in (
        "RETRY_WAIT",
        "RETRY_WAIT_MAX",
        "REDELIVERY_DELAY",
        "REDELIVERY_DELAY_MAX",
        "CLAIM_TIMEOUT",
        "SWEEP_INTERVAL",
        "WORKER_POLL_INTERVAL",
    ):
        value = getattr(conf.settings, key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            errors.append(
                _setting_error(
                    f"MESSAGEBUS[{key!r}] must be a number of seconds, not {value!r}", key
                )
            )
    return errors


@checks.register("messagebus")
def check_messages(
    app_configs: Iterable[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    names: dict[str, list[type[Message]]] = defaultdict(list)
    for cls in _app_messages(app_configs):
        params = cls.__dict__.get("__dataclass_params__")
        if params is None or not params.frozen:
            errors.append(
                checks.Error(
                    f"{cls.__name__} is not a frozen dataclass.",
                    hint="Decorate it with @dataclass(frozen=True).",
                    obj=cls,
                    id="messagebus.E004",
                )
            )
            continue
        try:
            check_serializable(cls)
        except MessageEncodeError as exc:
            errors.append(
                checks.Error(
                    f"{cls.__name__} cannot be stored as JSON: {exc}.",
                    hint="Use str, int, float, bool, Decimal, date, datetime, UUID, enums, "
                    "X | None, list[X], tuple[X, ...] or nested dataclasses of those.",
                    obj=cls,
                    id="messagebus.E002",
                )
            )
        names[message_type_name(cls)].append(cls)
        if issubclass(cls, Command) and not cls.__subclasses__():
            try:
                registry.command_handler(cls)
            except LookupError:
                errors.append(
                    checks.Warning(
                        f"The command {cls.__name__} has no handler.",
                        hint=f"Add a function taking ({cls.__name__}) to a handlers module, decorated with @messagebus.handler.",
                        obj=cls,
                        id="messagebus.W001",
                    )
                )
    for name, classes in names.items():
        if len(classes) > 1:
            errors.append(
                checks.Error(
                    f"{', '.join(f'{c.__module__}.{c.__qualname__}' for c in classes)} are all stored as {name!r}.",
                    hint="Rename one, or give it a distinct `type_name`.",
                    obj=classes[-1],
                    id="messagebus.E005",
                )
            )
    return errors


@checks.register("messagebus")
def check_handlers(
    app_configs: Iterable[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    errors = []
    available = dependencies.names()
    for handler in registry.handlers():
        for name, optional in handler.parameters:
            if not optional and name not in available:
                errors.append(
                    checks.Error(
                        f"{handler} asks for {name!r}, which the bus cannot provide.",
                        hint=f"Name a parameter 'uow' or 'bus', or add {name!r} to MESSAGEBUS['DEPENDENCIES'].",
                        obj=handler.func,
                        id="messagebus.E001",
                    )
                )
    return errors


def _app_messages(app_configs: Iterable[AppConfig] | None) -> list[type[Message]]:
    wanted = {app.label for app in app_configs} if app_configs is not None else None
    found = []
    for cls in message_classes():
        app = apps.get_containing_app_config(cls.__module__)
        if app is not None and (wanted is None or app.label in wanted):
            found.append(cls)
    return found


def _setting_error(msg: str, obj: Any, hint: str | None = None) -> checks.Error:
    return checks.Error(
        msg,
        hint=hint or "See messagebus.conf for the settings and their defaults.",
        obj=obj,
        id="messagebus.E003",
    )
