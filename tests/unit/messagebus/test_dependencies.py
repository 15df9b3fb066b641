import pytest
from django.test import override_settings

from messagebus.core.dependencies import Dependencies
from messagebus.core.registry import Registry
from messagebus.exceptions import UnknownDependency
from tests.busapp.events import Opened
from tests.busapp.services import Clock


def handler_for(func):
    registry = Registry()
    registry.register(None, func)
    return registry.event_handlers(Opened)[0]


def test_uow_bus_and_configured_names_are_passed_by_name():
    def handle(event: Opened, clock, uow, bus) -> None: ...

    kwargs = Dependencies().kwargs(handler_for(handle), uow="the uow", bus="the bus")
    assert kwargs["uow"] == "the uow" and kwargs["bus"] == "the bus"
    assert isinstance(kwargs["clock"], Clock)


def test_configured_factories_are_called_once_per_process():
    def handle(event: Opened, clock) -> None: ...

    deps = Dependencies()
    first = deps.kwargs(handler_for(handle), None, None)["clock"]
    assert deps.kwargs(handler_for(handle), None, None)["clock"] is first


def test_overrides_win_and_are_undone():
    def handle(event: Opened, clock, uow) -> None: ...

    deps = Dependencies()
    with deps.override(clock="fake clock", uow="fake uow"):
        assert deps.kwargs(handler_for(handle), "real", None) == {
            "clock": "fake clock",
            "uow": "fake uow",
        }
    assert isinstance(deps.kwargs(handler_for(handle), "real", None)["clock"], Clock)


def test_an_unknown_name_is_an_error_naming_it_and_the_handler():
    def handle(event: Opened, mailer) -> None: ...

    with pytest.raises(UnknownDependency, match="handle asks for a dependency named 'mailer'"):
        Dependencies().kwargs(handler_for(handle), None, None)


def test_a_parameter_with_a_default_may_go_unprovided():
    def handle(event: Opened, mailer=None) -> None: ...

    assert Dependencies().kwargs(handler_for(handle), None, None) == {}


def test_settings_are_read_when_used():
    def handle(event: Opened, mailer) -> None: ...

    with override_settings(MESSAGEBUS={"DEPENDENCIES": {"mailer": "tests.busapp.services.Clock"}}):
        assert isinstance(Dependencies().kwargs(handler_for(handle), None, None)["mailer"], Clock)
