"""Inbound messages become commands once each; malformed ones are skipped with the reason."""

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import reverse

import messagebus
from allocation.commands import CreateBatch
from allocation.models import Batch
from messagebus import external
from messagebus.checks import check_external
from messagebus.exceptions import RegistrationError
from messagebus.external.inbox import Malformed, receive, receive_batch, translated
from messagebus.external.transports import Verdict
from messagebus.models import InboxMessage
from tests.busapp.events import Announced

CHANNEL = "change_batch_quantity"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (b'{"batchref": "b1"}', "no 'qty'"),
        (b'{"batchref": "b1", "qty": "five"}', "qty: 'five' is not a whole number$"),
        (b'{"batchref": 7, "qty": 5}', "ref: 7 is not text$"),
        (b'{"batchref": "b1", "qty": -1}', "qty: -1 is not between 1 and 1000000$"),
        (b'{"batchref": "b1", "qty": 0}', "qty: 0 is not between 1 and 1000000$"),
        (b'{"batchref": "b1", "qty": 5000000}', "qty: 5000000 is not between 1 and 1000000$"),
        (b'{"batchref": "b1", "qty": 1e29}', r"qty: 1e\+29 is not a whole number$"),
        (b'{"batchref": "b\\u0000", "qty": 5}', "ref: 'b.x00': Use only letters"),
        (b"[" * 200_000, "not JSON: nested more than 100 deep$"),
    ],
)
def test_a_malformed_body_says_why(body, reason):
    with pytest.raises(Malformed, match=reason):
        translated(CHANNEL, body)


def test_a_field_of_the_wrong_type_for_its_annotation_is_malformed():
    with pytest.raises(
        Malformed, match=re.escape("wrong type: Record: Expected `int`, got `str` - at `$.n`")
    ):
        translated("busapp_record", b'{"n": "five"}')


def test_a_body_over_the_size_limit_is_not_decoded(monkeypatch):
    monkeypatch.setattr("json.loads", lambda *args: pytest.fail("decoded"))
    with (
        override_settings(MESSAGEBUS={"INBOUND_MAX_BYTES": 10}),
        pytest.raises(Malformed, match=r"^too large: 11 bytes, over .*\(10\)$"),
    ):
        translated(CHANNEL, b"{" + b" " * 9 + b"}")


def test_a_channel_nobody_takes_in_is_malformed():
    with pytest.raises(Malformed, match="no app takes in messages on 'nowhere'"):
        translated("nowhere", b"{}")


def test_a_good_body_is_the_declared_command():
    command = translated(CHANNEL, b'{"batchref": "b1", "qty": 5}')
    assert (type(command).__name__, command.ref, command.qty) == ("ChangeBatchQuantity", "b1", 5)


def test_a_message_is_handled_once_whatever_the_copies(messagebus_deliver):
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    body = json.dumps({"batchref": "b1", "qty": 5}).encode()
    assert receive(CHANNEL, body, "m-1").verdict is Verdict.ACK
    Batch.objects.filter(reference="b1").update(purchased_quantity=10)  # undone by hand
    assert receive(CHANNEL, body, "m-1").verdict is Verdict.ACK  # a copy: acknowledged, not handled

    assert Batch.objects.get(reference="b1").purchased_quantity == 10
    row = InboxMessage.objects.get()
    assert (row.message_id, row.status, row.command) == ("m-1", "handled", "ChangeBatchQuantity")


def test_a_malformed_message_is_recorded_as_skipped_and_dead_lettered(db):
    assert receive(CHANNEL, b"not json", None).verdict is Verdict.DEAD
    row = InboxMessage.objects.get()
    assert row.status == "skipped" and row.reason.startswith("not JSON")
    assert row.message_id.startswith("no-id:")  # none came with it


def test_a_command_the_domain_refuses_is_dead_lettered_and_recorded(db):
    body = b'{"batchref": "no-such-batch", "qty": 5}'
    settled = receive(CHANNEL, body, "m-2")
    assert settled.verdict is Verdict.DEAD
    row = InboxMessage.objects.get()
    assert row.status == "skipped" and "refused" in row.reason and "no-such-batch" in row.reason
    assert settled.reason == row.reason


def test_consume_needs_a_broker(db):
    with (
        override_settings(MESSAGEBUS={"EXTERNAL_URL": None}),
        pytest.raises(CommandError, match="no broker to consume from"),
    ):
        call_command("messagebus", "consume")


@dataclass(frozen=True)
class Unhandled(messagebus.Command):
    n: int


def test_a_channel_whose_command_has_no_handler_fails_the_checks(monkeypatch):
    monkeypatch.setattr(external, "subscriptions", dict(external.subscriptions))
    assert check_external() == []

    @messagebus.consumes("unhandled")
    def unhandled(body: dict[str, Any]) -> Unhandled:
        return Unhandled(n=body["n"])

    [error] = check_external()
    assert error.id == "messagebus.E007"
    assert "Messages on 'unhandled' become Unhandled" in error.msg


def test_a_translator_must_say_what_command_it_makes():
    with pytest.raises(RegistrationError, match=r"annotated to return a messagebus\.Command"):

        @messagebus.consumes("untyped")
        def untyped(body):
            return body


def test_the_admin_and_status_show_the_inbox(admin_client, capsys):
    receive(CHANNEL, b"not json", None)

    page = admin_client.get(reverse("admin:messagebus_inboxmessage_changelist"))
    assert page.status_code == 200
    assert "not JSON" in page.content.decode()
    call_command("messagebus", "status")
    assert "Inbox: 0 handled, 1 skipped" in capsys.readouterr().out
    call_command("messagebus", "status", "--json")
    assert json.loads(capsys.readouterr().out)["inbox"] == {"handled": 0, "skipped": 1}


def test_messages_without_ids_are_each_handled(messagebus_deliver):
    """Redis pub/sub brings no ids and never redelivers: equal bodies are two commands."""
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    body = b'{"batchref": "b1", "qty": 5}'
    assert receive(CHANNEL, body, None).verdict is Verdict.ACK
    assert receive(CHANNEL, body, None).verdict is Verdict.ACK
    assert InboxMessage.objects.filter(status="handled").count() == 2


def test_a_batch_is_handled_in_one_transaction_each_message_once(messagebus_deliver):
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    messagebus.bus.handle(CreateBatch("b2", "LAMP", 10))
    assert receive(CHANNEL, b'{"batchref": "b1", "qty": 9}', "seen").verdict is Verdict.ACK

    verdicts = receive_batch([
        (CHANNEL, b'{"batchref": "b1", "qty": 3}', "seen", None),  # handled before
        (CHANNEL, b'{"batchref": "b1", "qty": 4}', "m-1", None),
        (CHANNEL, b"not json", "m-2", None),
        (CHANNEL, b'{"batchref": "b2", "qty": 5}', "m-3", None),
        (CHANNEL, b'{"batchref": "b2", "qty": 6}', "m-3", None),  # a copy in the same batch
    ])  # fmt: skip

    assert [v.verdict for v in verdicts] == [
        Verdict.ACK, Verdict.ACK, Verdict.DEAD, Verdict.ACK, Verdict.ACK,
    ]  # fmt: skip
    quantities = dict(Batch.objects.values_list("reference", "purchased_quantity"))
    assert quantities == {"b1": 4, "b2": 5}
    statuses = dict(InboxMessage.objects.values_list("message_id", "status"))
    assert statuses == {"seen": "handled", "m-1": "handled", "m-2": "skipped", "m-3": "handled"}


def test_a_command_refused_in_a_batch_leaves_the_others_handled(messagebus_deliver):
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))

    verdicts = receive_batch([
        (CHANNEL, b'{"batchref": "b1", "qty": 4}', "m-1", None),
        (CHANNEL, b'{"batchref": "no-such-batch", "qty": 4}', "m-2", None),
        (CHANNEL, b'{"batchref": "b1", "qty": 6}', "m-3", None),
    ])  # fmt: skip

    assert [v.verdict for v in verdicts] == [Verdict.ACK, Verdict.DEAD, Verdict.ACK]
    assert Batch.objects.get(reference="b1").purchased_quantity == 6  # in order
    rows = {
        m: (s, r) for m, s, r in InboxMessage.objects.values_list("message_id", "status", "reason")
    }
    assert rows["m-1"][0] == rows["m-3"][0] == "handled"
    assert rows["m-2"][0] == "skipped" and "no-such-batch" in rows["m-2"][1]


@pytest.mark.parametrize(
    ("event_type", "channel", "reason"),
    [
        (CreateBatch, "batches", "is not an event"),
        (Announced, "no spaces", "is not a channel name"),
    ],
)
def test_what_is_published_is_an_event_on_a_named_channel(event_type, channel, reason):
    with pytest.raises(RegistrationError, match=reason):
        messagebus.publishes(event_type, channel)


def test_a_publication_is_keyed_by_a_field_of_its_event():
    with pytest.raises(RegistrationError, match="Announced has no field 'sku' to key it by"):
        messagebus.publishes(Announced, "announced_by_sku", key="sku")
