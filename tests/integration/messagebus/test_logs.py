"""Log lines about a message carry its type, id, correlation id and handler as fields."""

import json
import logging

import pytest
from django.db import IntegrityError

import messagebus
from allocation.events import Allocated
from allocation.handlers import post_allocation
from messagebus import executors
from messagebus.executors.worker import WorkerExecutor
from messagebus.observe.logs import MessageFields
from messagebus.testing import run_due
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Opened
from tests.receiver import nothing_listens

pytestmark = pytest.mark.django_db(transaction=True)


def about(record: logging.LogRecord) -> tuple[str, str, str, str]:
    return record.message_type, record.message_id, record.correlation_id, record.handler


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failed_deliverys_records_carry_the_message_and_the_handler(
    messagebus_registry, caplog, kind
):
    def welcome(event: Opened) -> None:
        raise ConnectionError("mail server down")

    async def welcome_async(event: Opened) -> None:
        raise ConnectionError("mail server down")

    handler = welcome if kind == "sync" else welcome_async
    messagebus_registry.register(None, handler)
    seen: list[Opened] = []
    messagebus_registry.register(Opened, seen.append, name="remember")
    with caplog.at_level(logging.INFO, logger="messagebus"):
        messagebus.bus.handle(OpenAccount(name="ann"))  # one call
        run_due()  # the rest of its run

    event = seen[0]
    name = f"{handler.__module__}.{handler.__qualname__}"
    expected = ("busapp.Opened", str(event.message_id), str(event.correlation_id), name)
    failures = [r for r in caplog.records if "failed on" in r.getMessage()]
    assert len(failures) == 3  # RETRY_ATTEMPTS calls
    assert {about(r) for r in failures} == {expected}
    [ended] = [r for r in caplog.records if r.getMessage().startswith("Failed run 1")]
    assert about(ended) == expected


def test_a_failed_commands_record_carries_the_command_and_its_handler(caplog):
    messagebus.bus.handle(OpenAccount(name="ann"))
    taken = pytest.raises(IntegrityError)
    with caplog.at_level(logging.ERROR, logger="messagebus"), taken:
        messagebus.bus.handle(OpenAccount(name="ann"))  # the name is taken

    [record] = [r for r in caplog.records if r.getMessage().startswith("Handler")]
    assert record.message_type == "busapp.OpenAccount"
    assert record.handler == "tests.busapp.handlers.open_account"


def test_a_handlers_own_lines_get_the_fields_through_the_filter(messagebus_registry):
    lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record)

    keep = Keep()
    keep.addFilter(MessageFields())
    mine = logging.getLogger("orders.mail")
    mine.addHandler(keep)

    def welcome(event: Opened) -> None:
        mine.warning("sending a welcome to %s", event.name)

    messagebus_registry.register(None, welcome)
    try:
        messagebus.bus.handle(OpenAccount(name="ann"))
    finally:
        mine.removeHandler(keep)

    [record] = lines
    assert record.message_type == "busapp.Opened"
    assert record.handler.endswith("welcome")


def test_with_log_format_json_each_line_is_json_with_the_fields(messagebus_registry, manage):
    messagebus_registry.register(None, post_allocation)
    down = nothing_listens()
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(Allocated(orderid="o1", sku="LAMP", qty=1, batchref="b1"))

    result = manage(
        "messagebus", "worker", "--once",
        env={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "ALLOCATION_WEBHOOK_URLS": down},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    failed = [line for line in lines if "failed on" in line["message"]]
    assert len(failed) == 3
    for line in failed:
        assert line["levelname"] == "WARNING"
        assert line["message_type"] == "allocation.Allocated"
        assert line["handler"] == "allocation.handlers.post_allocation"
        assert line["correlation_id"] and line["message_id"]
