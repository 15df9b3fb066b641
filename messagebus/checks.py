"""System checks (``manage.py check``) for the wiring of messages and handlers."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks
from django.utils import timezone

from . import conf
from .core import periodic
from .core.dependencies import dependencies
from .core.messages import Command, Message, Query, message_classes, message_type_name
from .core.policy import OVERRIDABLE
from .core.registry import Handler, registry
from .core.serialization import check_serializable
from .exceptions import MessageEncodeError
from .sagas.registration import messages, registered

JSON_TYPES = (
    "Use str, int, float, bool, Decimal, date, datetime, UUID, enums, "
    "X | None, list[X], tuple[X, ...], dict[str, X] or nested dataclasses of those; "
    "dict for any JSON object."
)


@checks.register("messagebus")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return list(_settings_errors())


@checks.register("messagebus")
def check_messages(
    app_configs: Iterable[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    return list(_message_errors(_app_messages(app_configs)))


@checks.register("messagebus")
def check_handlers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    available = dependencies.names()
    for handler in registry.handlers():
        for name, optional in handler.parameters:
            if not optional and name not in available:
                errors.append(checks.Error(
                    f"{handler} asks for {name!r}, which the bus cannot provide.",
                    hint=f"Name it 'uow' or 'bus', or add {name!r} to MESSAGEBUS['DEPENDENCIES'].",
                    obj=handler.func,
                    id="messagebus.E001",
                ))  # fmt: skip
        errors.extend(_option_errors(handler))
    return errors


@checks.register("messagebus")
def check_processes(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Each message of a process manager must hold its key: the instance it is for."""
    errors: list[checks.CheckMessage] = []
    for process in registered():
        for method, cls, _ in messages(process):
            if process.key not in {f.name for f in dataclasses.fields(cls)}:
                errors.append(checks.Error(
                    f"{process.name}.{method} handles {cls.__qualname__}, which has no field "
                    f"{process.key!r}: no instance of the process can be found for it.",
                    hint=f"Add {process.key} to {cls.__qualname__}, or handle another message.",
                    obj=process,
                    id="messagebus.E009",
                ))  # fmt: skip
    return errors


@checks.register("messagebus")
def check_external(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """What apps take in from other services must end somewhere."""
    from .external import subscriptions

    errors: list[checks.CheckMessage] = []
    for channel, subscription in sorted(subscriptions.items()):
        command = subscription.command
        if not _handled(command):
            errors.append(checks.Error(
                f"Messages on {channel!r} become {command.__qualname__} "
                f"({subscription.name}), which has no handler.",
                hint=f"Register a handler for {command.__qualname__} with @messagebus.handler.",
                obj=subscription.translate,
                id="messagebus.E007",
            ))  # fmt: skip
    return errors


@checks.register("messagebus")
def check_schedules(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Periodic schedules: each one's cron, time zone, message and rule for missed ticks."""
    errors: list[checks.CheckMessage] = [
        checks.Error(
            f"MESSAGEBUS['SCHEDULES']: {problem}.",
            hint="Each schedule: {'cron': '*/5 * * * *', 'message': 'dotted.path.Class', "
            "'kwargs': {...}, 'timezone': 'UTC', 'missed': 'once' or 'skip'}.",
            id="messagebus.E008",
        )
        for problem in periodic.schedules.problems()
    ]
    for schedule in periodic.schedules.all():
        try:
            message = schedule.message(timezone.now())
        except Exception as exc:  # noqa: BLE001  (a schedule's own function may raise anything)
            problem = f"cannot make its message: {exc!r}"
        else:
            if not isinstance(message, Command) or _handled(type(message)):
                continue
            problem = f"sends the command {type(message).__qualname__}, which has no handler"
        errors.append(checks.Error(
            f"The periodic schedule {schedule.name} {problem}.", obj=schedule.make,
            id="messagebus.E008",
        ))  # fmt: skip
    return errors


def _option_errors(handler: Handler) -> Iterator[checks.CheckMessage]:
    if handler.options and issubclass(handler.message_type, Command | Query):
        kind = "a command" if issubclass(handler.message_type, Command) else "a query"
        yield checks.Error(
            f"{handler} handles {kind}, so it has no delivery policy to set.",
            hint=f"Drop {', '.join(name for name, _ in handler.options)} from @handler().",
            obj=handler.func,
            id="messagebus.E006",
        )
        return
    for name, value in handler.options:
        if problem := OVERRIDABLE[name](value):
            yield checks.Error(
                f"{handler}: the option {name}={value!r} {problem}.",
                obj=handler.func,
                id="messagebus.E006",
            )
    yield from _cap_errors(handler)
    yield from _ordering_errors(handler)


def _cap_errors(handler: Handler) -> Iterator[checks.CheckMessage]:
    """``max_concurrency`` and ``concurrency_key``: a cap on deliveries after commit, by a
    field the message has."""
    options = dict(handler.options)
    key = options.get("concurrency_key")
    problem = ""
    if "max_concurrency" in options and handler.in_transaction:
        problem = "caps deliveries, but it runs in the transaction that records its event"
        hint = "Drop max_concurrency, or let it be delivered after commit."
    elif key is not None and "max_concurrency" not in options:
        problem = f"has a concurrency_key ({key!r}) but no max_concurrency"
        hint = "Add max_concurrency=N: at most N deliveries per value of the key at once."
    elif isinstance(key, str) and key not in _fields(handler.message_type):
        problem, hint = _not_a_field(handler.message_type, "concurrency_key", key)
    if problem:
        yield checks.Error(f"{handler} {problem}.", hint=hint, obj=handler.func,
                           id="messagebus.E006")  # fmt: skip


def _ordering_errors(handler: Handler) -> Iterator[checks.CheckMessage]:
    """``ordering_key`` and ``dead_head``: an order by a field the message has, of
    deliveries after commit, not capped as well (the message class's own key is checked
    with the class, E010)."""
    options = dict(handler.options)
    key = options.get("ordering_key")
    problem = hint = ""
    if "dead_head" in options and key is None:
        problem = "has a dead_head option but no ordering_key"
        hint = "Name the field that orders its deliveries: ordering_key='...'."
    elif key is None:
        return
    elif handler.in_transaction:
        problem = "is ordered, but it runs in the transaction that records its event"
        hint = "Drop ordering_key: it is called in that order already."
    elif {"max_concurrency", "concurrency_key"} & set(options):
        problem = "is ordered and capped: it runs one delivery of a key at a time already"
        hint = "Drop max_concurrency and concurrency_key, or ordering_key."
    elif key not in _fields(handler.message_type) and key != handler.message_type.ordering_key:
        problem, hint = _not_a_field(handler.message_type, "ordering_key", key)
    if problem:
        yield checks.Error(f"{handler} {problem}.", hint=hint, obj=handler.func,
                           id="messagebus.E006")  # fmt: skip


def _not_a_field(cls: type[Message], option: str, name: Any) -> tuple[str, str]:
    """Why ``option`` may not name ``name``, and the fields it may name."""
    own = [field for field in _fields(cls) if field not in _fields(Message)]
    return (
        f"has {option}={name!r}, which is not a field of {cls.__qualname__}",
        f"Name one of its fields: {', '.join(own) or 'it has none of its own'}.",
    )


def _fields(cls: type[Message]) -> list[str]:
    return [field.name for field in dataclasses.fields(cls)]


def _settings_errors() -> Iterator[checks.CheckMessage]:
    raw = getattr(settings, "MESSAGEBUS", {})
    if not isinstance(raw, dict):
        yield _setting_error("MESSAGEBUS must be a dict")
        return
    declared = {setting.key: setting for setting in conf.Settings.declared()}
    for key in sorted(set(raw) - set(declared)):
        yield _setting_error(f"MESSAGEBUS has an unknown key {key!r}")
    for key, setting in declared.items():
        if key in raw:
            if (problem := setting.validate(raw[key])) is not None:
                space = "" if problem.startswith("[") else " "
                yield _setting_error(f"MESSAGEBUS[{key!r}]{space}{problem}")
            if setting.environ in os.environ:
                yield checks.Warning(
                    f"{setting.environ} is set in the environment, but MESSAGEBUS[{key!r}] "
                    "in the settings wins, so it is not read.",
                    hint=f"Leave {key!r} out of MESSAGEBUS to take it from the environment, "
                    f"or unset {setting.environ}.",
                    id="messagebus.W002",
                )
        elif setting.environ in os.environ and (
            (problem := setting.validate(setting.from_environ())) is not None
        ):
            space = "" if problem.startswith("[") else " "
            yield _setting_error(f"{setting.environ} (environment){space}{problem}")


def _message_errors(classes: list[type[Message]]) -> Iterator[checks.CheckMessage]:
    names: dict[str, list[type[Message]]] = defaultdict(list)
    for cls in classes:
        params = cls.__dict__.get("__dataclass_params__")
        if params is None or not params.frozen:
            yield checks.Error(
                f"{cls.__name__} is not a frozen dataclass.",
                hint="Decorate it with @dataclass(frozen=True).",
                obj=cls,
                id="messagebus.E004",
            )
            continue
        try:
            if not issubclass(cls, Query):  # asked and answered in memory, never stored
                check_serializable(cls)
        except MessageEncodeError as exc:
            yield checks.Error(
                f"{cls.__name__} cannot be stored as JSON: {exc}.",
                hint=JSON_TYPES,
                obj=cls,
                id="messagebus.E002",
            )
        names[message_type_name(cls)].append(cls)
        key = cls.ordering_key
        if key is not None and (not isinstance(key, str) or key not in _fields(cls)):
            problem, hint = _not_a_field(cls, "ordering_key", key)
            yield checks.Error(f"{cls.__name__} {problem}.", hint=hint, obj=cls,
                               id="messagebus.E010")  # fmt: skip
        if issubclass(cls, Command | Query) and not cls.__subclasses__() and not _handled(cls):
            kind = "command" if issubclass(cls, Command) else "query"
            yield checks.Warning(
                f"The {kind} {cls.__name__} has no handler.",
                hint=f"Decorate a function taking a {cls.__name__} with @messagebus.handler.",
                obj=cls,
                id="messagebus.W001",
            )
    for name, same in names.items():
        if len(same) > 1:
            yield checks.Error(
                f"{', '.join(f'{c.__module__}.{c.__qualname__}' for c in same)} "
                f"are all stored as {name!r}.",
                hint="Rename one, or give it a distinct `type_name`.",
                obj=same[-1],
                id="messagebus.E005",
            )


def _handled(cls: type[Message]) -> bool:
    try:
        if issubclass(cls, Query):
            registry.query_handler(cls)
        else:
            registry.command_handler(cls)
    except LookupError:
        return False
    return True


def _app_messages(app_configs: Iterable[AppConfig] | None) -> list[type[Message]]:
    wanted = {app.label for app in app_configs} if app_configs is not None else None
    found = []
    for cls in message_classes():
        app = apps.get_containing_app_config(cls.__module__)
        if app is not None and (wanted is None or app.label in wanted):
            found.append(cls)
    return found


def _setting_error(message: str) -> checks.Error:
    return checks.Error(
        message,
        hint=f"See messagebus.conf; the keys are {', '.join(conf.defaults())}.",
        id="messagebus.E003",
    )
