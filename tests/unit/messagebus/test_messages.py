import dataclasses
import uuid
from dataclasses import dataclass

import pytest

import messagebus
from messagebus.core.messages import current_message, message_class, message_type_name
from tests.busapp.commands import Deposit
from tests.busapp.events import Deposited


@dataclass(frozen=True)
class Renamed(messagebus.Event):
    type_name = "legacy.AccountRenamed"
    name: str


def test_type_name_is_app_label_and_class_name():
    assert message_type_name(Deposited) == "busapp.Deposited"
    assert message_class("busapp.Deposited") is Deposited


def test_type_name_can_be_set_explicitly():
    assert message_type_name(Renamed) == "legacy.AccountRenamed"
    assert message_class("legacy.AccountRenamed") is Renamed


def test_unknown_type_name_has_no_class():
    assert message_class("busapp.NoSuchThing") is None


def test_messages_are_frozen_and_positional():
    cmd = Deposit("alice", 5)
    assert (cmd.name, cmd.amount) == ("alice", 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd.amount = 6  # type: ignore[misc]


def test_a_new_message_starts_its_own_chain():
    cmd = Deposit("alice", 5)
    assert isinstance(cmd.message_id, uuid.UUID)
    assert cmd.correlation_id == cmd.message_id
    assert cmd.causation_id is None
    assert Deposit("alice", 5).message_id != cmd.message_id


def test_a_message_created_while_handling_another_joins_its_chain():
    cmd = Deposit("alice", 5)
    token = current_message.set(cmd)
    try:
        event = Deposited(name="alice", amount=5)
    finally:
        current_message.reset(token)
    assert event.correlation_id == cmd.correlation_id
    assert event.causation_id == cmd.message_id
    assert event.message_id != cmd.message_id


def test_equality_ignores_identity_and_lineage():
    assert Deposited(name="a", amount=1) == Deposited(name="a", amount=1)
    assert Deposited(name="a", amount=1) != Deposited(name="a", amount=2)


def test_str_names_type_id_and_correlation():
    event = Deposited(name="a", amount=1)
    text = str(event)
    assert "busapp.Deposited" in text
    assert str(event.message_id) in text
    assert str(event.correlation_id) in text
