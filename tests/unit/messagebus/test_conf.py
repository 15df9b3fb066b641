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


def test_each_transports_url_scheme_builds_its_transport():
    from messagebus.external import transports
    from messagebus.external.transports.kafka import KafkaTransport
    from messagebus.external.transports.nats import NatsTransport
    from messagebus.external.transports.redis import RedisTransport
    from messagebus.external.transports.redis_streams import RedisStreamTransport

    built = {}
    urls = ("redis://127.0.0.1:1/0", "redis+stream://127.0.0.1:1/3", "nats://127.0.0.1:1",
            "kafka://127.0.0.1:1,127.0.0.1:2")  # fmt: skip
    for url in urls:
        assert conf.external_url(url) is None
        with override_settings(MESSAGEBUS={"EXTERNAL_URL": url}):
            built[url.split(":")[0]] = transports.get()  # it connects only when used
    transports.reset()
    assert isinstance(built["redis"], RedisTransport)
    assert isinstance(built["redis+stream"], RedisStreamTransport)
    assert built["redis+stream"].client.connection_pool.connection_kwargs["db"] == 3
    assert isinstance(built["nats"], NatsTransport)
    assert isinstance(built["kafka"], KafkaTransport)
    assert built["kafka"].servers == "127.0.0.1:1,127.0.0.1:2"
    assert "kafka://" in conf.external_url("mqtt://127.0.0.1:1883")
    assert "nats://" in conf.external_url("mqtt://127.0.0.1:1883")


def test_the_brokers_settings_check_their_values(monkeypatch):
    assert conf.subject_prefix("shop.events") is None
    for wrong in ("", "shop..events", "shop.*", "a b", ".shop", 7):
        assert "NATS subject tokens" in conf.subject_prefix(wrong)
    assert conf.whole_number_or_none(None) is None and conf.whole_number_or_none(0) is not None
    monkeypatch.setenv("MESSAGEBUS_REDIS_STREAM_MAXLEN", "none")
    with override_settings(MESSAGEBUS={}):
        assert conf.settings.REDIS_STREAM_MAXLEN is None
        monkeypatch.setenv("MESSAGEBUS_REDIS_STREAM_MAXLEN", "100000")
        assert conf.settings.REDIS_STREAM_MAXLEN == 100_000
        monkeypatch.setenv("MESSAGEBUS_NATS_CREATE_STREAM", "no")
        assert conf.settings.NATS_CREATE_STREAM is False
        monkeypatch.setenv("MESSAGEBUS_KAFKA_OPTIONS", '{"security.protocol": "ssl"}')
        assert conf.settings.KAFKA_OPTIONS == {"security.protocol": "ssl"}
    assert conf.dead_topic("dead.{channel}") is None
    for wrong in ("dead", " {channel}.dead", 7):
        assert "holding {channel}" in conf.dead_topic(wrong)
    assert conf.client_properties({"linger.ms": 5, "sasl.username": "u"}) is None
    for wrong in ([], {"linger.ms": None}, {5: "x"}):
        assert "librdkafka property names" in conf.client_properties(wrong)


def test_a_key_left_out_of_the_settings_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("MESSAGEBUS_EXECUTOR", "worker")
    monkeypatch.setenv("MESSAGEBUS_MAX_DELIVERIES", "7")
    monkeypatch.setenv("MESSAGEBUS_RETRY_WAIT", "0.25")
    monkeypatch.setenv("MESSAGEBUS_TRACING", "off")
    monkeypatch.setenv("MESSAGEBUS_METRICS_ALLOWED_IPS", "10.0.0.0/8, 127.0.0.1")
    monkeypatch.setenv("MESSAGEBUS_DEPENDENCIES", '{"mailer": "orders.mail.Mailer"}')
    monkeypatch.setenv("MESSAGEBUS_HANDLER_TIMEOUT", "2")
    monkeypatch.setenv("MESSAGEBUS_EXTERNAL_URL", "")

    with override_settings(MESSAGEBUS={}):
        assert conf.settings.EXECUTOR == "worker"
        assert conf.settings.MAX_DELIVERIES == 7
        assert conf.settings.RETRY_WAIT == 0.25
        assert conf.settings.TRACING is False
        assert conf.settings.METRICS_ALLOWED_IPS == ["10.0.0.0/8", "127.0.0.1"]
        assert conf.settings.DEPENDENCIES == {"mailer": "orders.mail.Mailer"}
        assert conf.settings.HANDLER_TIMEOUT == 2.0
        assert conf.settings.EXTERNAL_URL is None
        assert conf.settings.BATCH_SIZE == 100  # not in the environment: the default


def test_the_settings_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("MESSAGEBUS_EXECUTOR", "worker")

    with override_settings(MESSAGEBUS={"EXECUTOR": "celery"}):
        assert conf.settings.EXECUTOR == "celery"


def test_a_value_the_environment_cannot_give_is_kept_as_text_for_the_check(monkeypatch):
    monkeypatch.setenv("MESSAGEBUS_MAX_DELIVERIES", "many")
    monkeypatch.setenv("MESSAGEBUS_HANDLER_TIMEOUT", "none")

    with override_settings(MESSAGEBUS={}):
        assert conf.settings.MAX_DELIVERIES == "many"
        assert conf.settings.HANDLER_TIMEOUT is None


def test_every_key_has_an_environment_variable_and_a_parser():
    for setting in conf.Settings.declared():
        assert setting.environ == f"MESSAGEBUS_{setting.key}"
        assert callable(setting.parse), setting.key
