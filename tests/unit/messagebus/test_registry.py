from dataclasses import dataclass

import pytest

import messagebus
from messagebus.core.registry import Registry
from messagebus.exceptions import HandlerAlreadyRegistered, HandlerNotFound, RegistrationError
from tests.busapp.commands import Deposit, OpenAccount
from tests.busapp.events import Deposited, Opened


@dataclass(frozen=True)
class Ping(messagebus.Command):
    n: int


@pytest.fixture
def registry():
    return Registry()


def test_the_message_type_comes_from_the_first_annotation(registry):
    def ping(cmd: Ping) -> int:
        return cmd.n

    registry.register(None, ping)
    handler = registry.command_handler(Ping)
    assert handler.func is ping
    assert handler.message_type is Ping
    assert (
        handler.name
        == f"{__name__}.test_the_message_type_comes_from_the_first_annotation.<locals>.ping"
    )


def test_the_message_type_can_be_given(registry):
    def ping(cmd, uow) -> None: ...

    registry.register(Ping, ping)
    assert registry.command_handler(Ping).parameters == (("uow", False),)


def test_a_second_command_handler_is_refused_naming_both(registry):
    def first(cmd: Ping) -> None: ...
    def second(cmd: Ping) -> None: ...

    registry.register(None, first)
    with pytest.raises(HandlerAlreadyRegistered) as error:
        registry.register(None, second)
    assert "Ping" in str(error.value)
    assert "first" in str(error.value) and "second" in str(error.value)
    assert registry.command_handler(Ping).func is first


def test_a_command_without_handler_is_an_error_naming_it(registry):
    with pytest.raises(HandlerNotFound, match="No handler is registered for the command Ping"):
        registry.command_handler(Ping)


def test_events_have_any_number_of_handlers_in_order(registry):
    def a(event: Deposited) -> None: ...
    def b(event: Deposited) -> None: ...

    registry.register(None, a)
    registry.register(None, b)
    assert [h.func for h in registry.event_handlers(Deposited)] == [a, b]
    assert registry.event_handlers(Opened) == ()
    assert registry.event_handler(Deposited, registry.event_handlers(Deposited)[1].name).func is b
    with pytest.raises(
        HandlerAlreadyRegistered, match="already registered for the event Deposited"
    ):
        registry.register(None, a)


def test_a_handler_must_take_the_message_first(registry):
    with pytest.raises(RegistrationError, match="must take the message as its first parameter"):
        registry.register(Ping, lambda: None)


def test_the_message_type_must_be_annotated_or_given(registry):
    with pytest.raises(RegistrationError, match="annotate the first parameter"):
        registry.register(None, lambda cmd: None)


def test_variadic_dependencies_are_refused(registry):
    with pytest.raises(RegistrationError, match="name each dependency"):
        registry.register(Ping, lambda cmd, *deps: None)


def test_only_message_types_can_be_handled(registry):
    def handle(value: int) -> None: ...

    with pytest.raises(RegistrationError, match="is not a Command, Event or Query class"):
        registry.register(None, handle)


def test_temporary_registrations_are_undone(registry):
    def ping(cmd: Ping) -> None: ...

    with registry.temporary(ping):
        assert registry.command_handler(Ping).func is ping
    with pytest.raises(HandlerNotFound):
        registry.command_handler(Ping)


def test_reset_forgets_everything(registry):
    def ping(cmd: Ping) -> None: ...

    registry.register(None, ping)
    registry.reset()
    assert list(registry.handlers()) == []


def test_autodiscovery_registered_the_test_apps_handlers():
    names = {h.name for h in messagebus.registry.handlers()}
    assert "tests.busapp.handlers.open_account" in names
    assert messagebus.registry.command_handler(Deposit).name == "tests.busapp.handlers.deposit"
    assert messagebus.registry.command_handler(OpenAccount).func.__name__ == "open_account"


def test_the_decorator_takes_an_explicit_type():
    with messagebus.registry.temporary():

        @messagebus.handler(Ping)
        def ping(cmd) -> int:
            return 1

        assert messagebus.registry.command_handler(Ping).func is ping


def test_async_handlers_register_like_sync_ones(registry):
    async def ping(cmd: Ping, bus) -> int:
        return 1

    async def on_deposit(event: Deposited, notifications=None) -> None: ...

    registry.register(None, ping)
    registry.register(None, on_deposit, timeout=2.5)
    assert registry.command_handler(Ping).is_async
    assert registry.command_handler(Ping).parameters == (("bus", False),)
    [handler] = registry.event_handlers(Deposited)
    assert handler.is_async and dict(handler.options) == {"timeout": 2.5}


def test_an_async_handler_is_known_through_a_decorator_and_as_a_callable_object(registry):
    import functools

    def logged(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)

        return wrapper

    @logged
    async def on_deposit(event: Deposited) -> None: ...

    class OnOpened:
        __qualname__ = "OnOpened"

        async def __call__(self, event: Opened) -> None: ...

    registry.register(None, on_deposit)
    registry.register(Opened, OnOpened(), name="on_opened")
    assert registry.event_handlers(Deposited)[0].is_async
    assert registry.event_handler(Opened, "on_opened").is_async


def test_an_async_handler_cannot_take_a_unit_of_work(registry):
    async def on_deposit(event: Deposited, uow) -> None: ...

    with pytest.raises(RegistrationError, match="outside any transaction and cannot take 'uow'"):
        registry.register(None, on_deposit)


def test_a_timeout_is_for_async_handlers(registry):
    def on_deposit(event: Deposited) -> None: ...

    with pytest.raises(RegistrationError, match="a sync one cannot be cancelled"):
        registry.register(None, on_deposit, timeout=1)


def test_generators_are_refused(registry):
    async def stream(event: Deposited):
        yield 1

    def chunks(event: Deposited):
        yield 1

    for func in (stream, chunks):
        with pytest.raises(RegistrationError, match="is a generator"):
            registry.register(None, func)


def test_a_handler_may_be_given_the_name_deliveries_know_it_by(registry):
    def moved_here(event: Deposited) -> None: ...

    registry.register(None, moved_here, name="payments.handlers.send_receipt")
    assert registry.event_handler(Deposited, "payments.handlers.send_receipt").func is moved_here


def test_a_callable_without_a_qualified_name_needs_a_name(registry):
    from functools import partial

    def notify(event: Deposited, channel: str) -> None: ...

    with pytest.raises(RegistrationError, match="register it with a name="):
        registry.register(Deposited, partial(notify, channel="email"))
    registry.register(Deposited, partial(notify, channel="email"), name="notify_by_email")
    assert registry.event_handler(Deposited, "notify_by_email") is not None


class SendReceipt:
    """A handler that keeps state of its own: a callable object."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def __call__(self, event: Deposited) -> None: ...


def test_a_callable_object_is_named_by_its_class_unless_given_a_name(registry):
    by_email = SendReceipt("email")
    registry.register(None, by_email)  # the event from __call__'s annotation

    [handler] = registry.event_handlers(Deposited)
    assert handler.name == f"{__name__}.SendReceipt"
    assert handler.func is by_email
    with pytest.raises(HandlerAlreadyRegistered, match="two objects of one class: give each"):
        registry.register(None, SendReceipt("sms"))
    registry.register(None, SendReceipt("sms"), name="receipts.by_sms")
    assert registry.event_handler(Deposited, "receipts.by_sms").func.channel == "sms"


@pytest.mark.parametrize("base", [messagebus.Event, messagebus.Command])
def test_handlers_of_the_base_classes_are_refused(registry, base):
    with pytest.raises(RegistrationError, match="exact class"):
        registry.register(base, lambda message: None)


def test_the_decorator_takes_a_name():
    with messagebus.registry.temporary():

        @messagebus.handler(name="audit.everything_deposited")
        def log_deposit(event: Deposited) -> None: ...

        assert messagebus.registry.event_handler(Deposited, "audit.everything_deposited")
