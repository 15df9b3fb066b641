"""The settings table: each key once, read lazily, documented where it is declared.

The settings reference in docs/ is generated from the declarations; tests/unit/test_docs.py
checks the built page against them.
"""

from django.test import override_settings

from messagebus import conf


def test_each_key_is_read_lazily_with_its_default():
    assert conf.settings.REDELIVERY_DELAY_MAX == 3600.0
    with override_settings(MESSAGEBUS={"REDELIVERY_DELAY_MAX": 5.0}):
        assert conf.settings.REDELIVERY_DELAY_MAX == 5.0
        assert conf.settings.MAX_DELIVERIES == 5


def test_validators_name_the_problem():
    assert conf.whole_number(0) == "must be a whole number of at least 1"
    assert conf.whole_number(True) is not None
    assert conf.seconds(-1) == "must be a number of seconds, not -1"
    assert conf.exception_paths(["builtins.len"]) == (
        "names 'builtins.len', which is not an exception class"
    )
    assert conf.executor("inline") is None and conf.executor("worker") is None
    assert conf.executor("celery") is None
    assert "not 'inline', 'worker', 'celery' or an importable class" in conf.executor("no.Such")


def test_the_amqp_exchange_is_a_setting():
    from messagebus.external.transports import amqp

    assert amqp.exchange().name == "messagebus"
    with override_settings(MESSAGEBUS={"AMQP_EXCHANGE": "shop.events"}):
        topic = amqp.exchange()
        queue = amqp.inbound_queue("line_allocated", "allocation")
    assert (topic.name, topic.type, topic.durable) == ("shop.events", "topic", True)
    assert queue.exchange.name == "shop.events" and queue.routing_key == "line_allocated"
