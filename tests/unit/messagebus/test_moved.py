"""The documented paths of modules that moved into layers still work, with a warning."""

import importlib
import warnings

import pytest
from django.db.migrations.writer import MigrationWriter
from django.utils.module_loading import import_string

import messagebus
from messagebus import conf

MOVED = [
    ("messagebus.health", "health", "messagebus.ops.health"),
    ("messagebus.metrics", "view", "messagebus.ops.prometheus"),
    ("messagebus.metrics", "Collector", "messagebus.ops.prometheus"),
    ("messagebus.metrics", "command", "messagebus.observe.metrics"),
    ("messagebus.logs", "MessageFields", "messagebus.observe.logs"),
    ("messagebus.failures", "is_outage", "messagebus.external.failures"),
    ("messagebus.delivery.reference", "Reference", "messagebus.outbox.reference"),
    ("messagebus.delivery.states", "Claim", "messagebus.outbox.states"),
    ("messagebus.inbound", "nested_deeper", "messagebus.external.inbound"),
    ("messagebus.worker", "Worker", "messagebus.processes.worker"),
    ("messagebus.delivery.policy", "Policy", "messagebus.core.policy"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_an_old_path_gives_what_the_new_one_does_and_says_where_it_went(old, name, new):
    module = importlib.import_module(old)

    with pytest.deprecated_call(match=rf"^{old}\.{name} is now {new}\.{name};"):
        found = getattr(module, name)

    assert found is getattr(importlib.import_module(new), name)


def test_a_name_an_old_path_never_had_is_an_attribute_error_with_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gone = r"'messagebus\.health' has no attribute 'nope'"
        with pytest.raises(AttributeError, match=gone):
            importlib.import_module("messagebus.health").nope  # noqa: B018


def test_from_import_of_an_old_path_warns_at_the_line_that_imports():
    with pytest.deprecated_call() as caught:
        from messagebus.logs import MessageFields  # noqa: F401

    assert caught[0].filename == __file__


@pytest.mark.parametrize("path", [*conf.EXECUTORS.values(), *conf.TRANSPORTS.values()])
def test_the_dotted_paths_settings_name_import_without_a_warning(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert isinstance(import_string(path), type)


def test_the_path_older_migrations_name_loads_with_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.import_module("messagebus.unit_of_work")
        assert module.Aggregate is messagebus.Aggregate


def test_migrations_name_the_aggregate_by_its_public_path_whatever_the_layout():
    assert MigrationWriter.serialize(messagebus.Aggregate) == (
        "messagebus.Aggregate",
        {"import messagebus"},
    )
