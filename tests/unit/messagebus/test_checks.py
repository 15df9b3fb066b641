"""``manage.py check`` on a correct project, and on each wiring mistake."""

from dataclasses import dataclass
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

import messagebus
from messagebus.core import messages

# From Django 6.1, `check` runs the model checks against every database: on SQLite, the
# JSON fields' check opens a connection to each. Outside a test transaction: two would
# wait on each other's lock on one SQLite file.
pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

APP_MODULE = "tests.busapp.checked"  # a module of an installed app


@pytest.fixture
def app_messages():
    """Define message classes as if in an installed app; forget them afterwards."""
    before = list(messages._classes)
    made = []

    def define(cls):
        cls.__module__ = APP_MODULE
        made.append(cls)
        return cls

    yield define
    messages._classes[:] = before
    for cls in made:
        messages._type_names.pop(cls, None)


def check_output(**settings) -> str:
    out = StringIO()
    with override_settings(**settings) if settings else _nothing():
        try:
            call_command("check", stdout=out, stderr=out)
        except SystemCheckError as error:
            return str(error) + out.getvalue()
    return out.getvalue()


class _nothing:
    def __enter__(self): ...
    def __exit__(self, *exc): ...


def test_a_correct_project_is_clean():
    assert "no issues" in check_output()


def test_a_command_without_handler_is_a_warning(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Forgotten(messagebus.Command):
        x: int

    output = check_output()
    assert "messagebus.W001" in output
    assert "The command Forgotten has no handler" in output


def test_a_query_without_handler_is_a_warning(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Unasked(messagebus.Query):
        x: int

    output = check_output()
    assert "messagebus.W001" in output
    assert "The query Unasked has no handler" in output


def test_a_query_is_never_stored_so_its_fields_need_no_json_form(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Between(messagebus.Query):
        days: set[str]

    def between(query: Between) -> int: ...

    with messagebus.registry.temporary(between):
        assert "no issues" in check_output()


def test_a_query_handler_with_a_delivery_policy_is_an_error(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Count(messagebus.Query):
        x: int

    def count(query: Count) -> int: ...

    with messagebus.registry.temporary():
        messagebus.registry.register(None, count, max_deliveries=3)
        output = check_output()
    assert "messagebus.E006" in output
    assert "handles a query, so it has no delivery policy to set" in output


def test_a_handler_asking_for_something_unknown_is_an_error(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Send(messagebus.Command):
        x: int

    def send(cmd: Send, mailer) -> None: ...

    with messagebus.registry.temporary(send):
        output = check_output()
    assert "messagebus.E001" in output
    assert "asks for 'mailer'" in output


def test_a_field_without_json_form_is_an_error(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Tagged(messagebus.Event):
        tags: set[str]

    output = check_output()
    assert "messagebus.E002" in output
    assert "Tagged cannot be stored as JSON" in output


def test_a_message_that_is_not_a_frozen_dataclass_is_an_error(app_messages):
    @app_messages
    class Loose(messagebus.Event):
        pass

    output = check_output()
    assert "messagebus.E004" in output
    assert "Loose is not a frozen dataclass" in output


def test_two_messages_stored_under_one_name_is_an_error(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Twin(messagebus.Event):
        x: int

    @app_messages
    @dataclass(frozen=True)
    class Other(messagebus.Event):
        type_name = "busapp.Twin"
        x: int

    output = check_output()
    assert "messagebus.E005" in output
    assert "are all stored as 'busapp.Twin'" in output


@pytest.mark.parametrize(
    "setting, expected",
    [
        ({"EXECUTOR": "nowhere.Executor"}, "MESSAGEBUS['EXECUTOR']"),
        ({"RETRY_ATTEMPTS": 0}, "MESSAGEBUS['RETRY_ATTEMPTS'] must be a whole number"),
        ({"MAX_DELIVERIES": "5"}, "MESSAGEBUS['MAX_DELIVERIES'] must be a whole number"),
        ({"RETRY_WAIT": -1}, "MESSAGEBUS['RETRY_WAIT'] must be a number of seconds"),
        (
            {"DEPENDENCIES": {"clock": "no.such.Clock"}},
            "MESSAGEBUS['DEPENDENCIES']['clock'] cannot be imported",
        ),
        ({"AMQP_EXCHANGE": ""}, "MESSAGEBUS['AMQP_EXCHANGE'] must be an exchange's name"),
        ({"RETRIES": 3}, "unknown key 'RETRIES'"),
    ],
)
def test_an_invalid_setting_is_an_error(setting, expected):
    output = check_output(
        MESSAGEBUS={"DEPENDENCIES": {"clock": "tests.busapp.services.Clock"}, **setting}
    )
    assert "messagebus.E003" in output
    assert expected in output


def test_an_invalid_value_from_the_environment_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MESSAGEBUS_MAX_DELIVERIES", "many")

    output = check_output(MESSAGEBUS={"DEPENDENCIES": {"clock": "tests.busapp.services.Clock"}})

    assert "messagebus.E003" in output
    assert "MESSAGEBUS_MAX_DELIVERIES (environment) must be a whole number" in output


def test_a_variable_the_settings_override_is_a_warning(monkeypatch):
    monkeypatch.setenv("MESSAGEBUS_EXECUTOR", "worker")
    clock = {"DEPENDENCIES": {"clock": "tests.busapp.services.Clock"}}

    overridden = check_output(MESSAGEBUS={**clock, "EXECUTOR": "inline"})
    read = check_output(MESSAGEBUS=clock)

    assert "messagebus.W002" in overridden
    assert "MESSAGEBUS_EXECUTOR is set in the environment, but MESSAGEBUS['EXECUTOR']" in overridden
    assert "messagebus.W002" not in read and "messagebus.E003" not in read


def test_delivery_options_are_checked(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Noted(messagebus.Event):
        x: int

    @app_messages
    @dataclass(frozen=True)
    class Note(messagebus.Command):
        x: int

    def hasty(event: Noted) -> None: ...

    def impatient(cmd: Note) -> None: ...

    with messagebus.registry.temporary() as registry:
        registry.register(None, hasty, max_deliveries=0, batch="no")
        registry.register(None, impatient, retry_attempts=2)
        output = check_output()
    assert "messagebus.E006" in output
    assert "the option max_deliveries=0 must be a whole number of at least 1" in output
    assert "the option batch='no' must be True or False" in output
    assert "impatient handles a command, so it has no delivery policy to set" in output


def test_a_concurrency_cap_is_checked_against_its_handler_and_its_message(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Charged(messagebus.Event):
        account: str
        amount: int

    def unbounded(event: Charged) -> None: ...

    def misnamed(event: Charged) -> None: ...

    def keyed_only(event: Charged) -> None: ...

    def derived(event: Charged) -> None: ...

    def fine(event: Charged) -> None: ...

    with messagebus.registry.temporary() as registry:
        registry.register(None, unbounded, max_concurrency=0)
        registry.register(None, misnamed, max_concurrency=2, concurrency_key="acount")
        registry.register(None, keyed_only, concurrency_key="account")
        registry.register(None, derived, max_concurrency=1, run="in_transaction")
        registry.register(None, fine, max_concurrency=2, concurrency_key="account")
        output = check_output()
    assert output.count("messagebus.E006") == 4
    assert "unbounded: the option max_concurrency=0 must be a whole number of at least 1" in output
    assert (
        "misnamed has concurrency_key='acount', which is not a field of "
        "test_a_concurrency_cap_is_checked_against_its_handler_and_its_message.<locals>.Charged"
    ) in output
    assert "HINT: Name one of its fields: account, amount." in output
    assert "keyed_only has a concurrency_key ('account') but no max_concurrency" in output
    assert "derived caps deliveries, but it runs in the transaction that records its event" in (
        output
    )
    assert "<locals>.fine" not in output


def test_an_unknown_delivery_option_is_refused_at_registration():
    from tests.busapp.events import Pinged

    def handler(event: Pinged) -> None: ...

    with (
        messagebus.registry.temporary(),
        pytest.raises(messagebus.RegistrationError, match="unknown option retries"),
    ):
        messagebus.handler(retries=3)(handler)


def test_an_ordering_key_is_checked_against_its_message_and_its_handler(app_messages):
    @app_messages
    @dataclass(frozen=True)
    class Shipped(messagebus.Event):
        ordering_key = "order"  # a field it lacks

        orderid: str

    @app_messages
    @dataclass(frozen=True)
    class Packed(messagebus.Event):
        ordering_key = "orderid"

        orderid: str

    def misnamed(event: Packed) -> None: ...

    def capped_too(event: Packed) -> None: ...

    def derived(event: Packed) -> None: ...

    def proceeds_unordered(event: Packed) -> None: ...

    def fine(event: Packed) -> None: ...

    with messagebus.registry.temporary() as registry:
        registry.register(None, misnamed, ordering_key="order_id")
        registry.register(None, capped_too, max_concurrency=1)
        registry.register(None, derived, run="in_transaction", ordering_key="orderid")
        registry.register(None, proceeds_unordered, ordering_key=None, dead_head="proceed")
        registry.register(None, fine, dead_head="proceed")
        output = check_output()
    assert output.count("messagebus.E010") == 1
    assert "Shipped has ordering_key='order', which is not a field of" in output
    assert "HINT: Name one of its fields: orderid." in output
    assert output.count("messagebus.E006") == 4
    assert "misnamed has ordering_key='order_id', which is not a field of" in output
    assert "capped_too is ordered and capped" in output
    assert "derived is ordered, but it runs in the transaction that records its event" in output
    assert "proceeds_unordered has a dead_head option but no ordering_key" in output
