"""The MESSAGEBUS setting: each key declared once, read on every access.

A key's default, its validator and its one-line description live in the
declaration below; the typed accessor (``conf.settings.RETRY_ATTEMPTS``), the
``messagebus.E003`` system check and the docs' settings reference all follow
from it. Values are read lazily, so ``override_settings`` works.

Each key is read from ``settings.MESSAGEBUS`` first; a key left out of it is
read from the environment variable ``MESSAGEBUS_<KEY>`` (parsed by the
declaration's ``parse``), then falls back to its default. A value the parse
cannot read is kept as the text it is, for the check to name.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

T = TypeVar("T")
Validator = Callable[[Any], str | None]  # the problem with a value, or None


class Setting(Generic[T]):
    """One key of MESSAGEBUS: its default, how to check a value, what it means, and how
    to read it from the environment (by default, as the type of its default)."""

    def __init__(
        self,
        default: T,
        validate: Validator,
        description: str,
        parse: Callable[[str], Any] | None = None,
    ) -> None:
        self.default = default
        self.validate = validate
        self.description = description
        self.parse = parse or PARSERS[type(default)]
        self.key = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    @property
    def environ(self) -> str:
        """The environment variable read when MESSAGEBUS leaves this key out."""
        return f"MESSAGEBUS_{self.key}"

    def from_environ(self) -> Any:
        """The environment's value, parsed; ``None`` when the variable is not set."""
        text = os.environ.get(self.environ)
        return None if text is None else self.parse(text)

    @overload
    def __get__(self, instance: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, instance: Settings, owner: type) -> T: ...
    def __get__(self, instance: Settings | None, owner: type) -> T | Setting[T]:
        if instance is None:
            return self
        raw = instance.raw
        if self.key in raw:
            value: T = raw[self.key]
            return value
        text = os.environ.get(self.environ)
        if text is not None:
            parsed: T = self.parse(text)
            return parsed
        return self.default


def _integer(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _number_or_none(text: str) -> float | str | None:
    return None if text.strip().lower() in ("", "none") else _number(text)


def _flag(text: str) -> bool | str:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return text


def _text(text: str) -> str:
    return text.strip()


def _text_or_none(text: str) -> str | None:
    return text.strip() or None


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _breaker_text(text: str) -> Any:
    """MESSAGEBUS_BREAKER: off (0, false, none), on with the defaults (1, true), or JSON."""
    word = text.strip().lower()
    if word in ("", "0", "false", "no", "off", "none"):
        return None
    return True if word in ("1", "true", "yes", "on") else _json(text)


# How a key is read from the environment, by the type of its default.
PARSERS: dict[type, Callable[[str], Any]] = {
    bool: _flag,
    int: _integer,
    float: _number,
    str: _text,
    list: _comma_list,
    dict: _json,
}


def whole_number(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    return "must be a whole number of at least 1"


def at_least_zero(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return "must be a whole number, 0 or more"


def field_name(value: Any) -> str | None:
    if isinstance(value, str) and value.isidentifier():
        return None
    return f"must be the name of a field of the message, not {value!r}"


def true_or_false(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def seconds(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return None
    return f"must be a number of seconds, not {value!r}"


def seconds_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return None
    return f"must be a number of seconds above 0, or None, not {value!r}"


BREAKER_FIELDS = {
    "rate": "a share of calls, above 0 and up to 1",
    "window": "seconds",
    "calls": "a whole number",
    "cool_down": "seconds",
}


def breaker(value: Any) -> str | None:
    """A circuit breaker: None or False (none), True (the defaults), or a dict of some of
    ``rate``, ``window``, ``calls`` and ``cool_down``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, tuple):  # a handler's option, as registered
        value = dict(value)
    if not isinstance(value, dict):
        return f"must be None, True or a dict of {', '.join(BREAKER_FIELDS)}, not {value!r}"
    for key, given in value.items():
        if key not in BREAKER_FIELDS:
            return f"has {key!r}; a breaker takes {', '.join(BREAKER_FIELDS)}"
        number = isinstance(given, int | float) and not isinstance(given, bool) and given > 0
        if not number or (key == "rate" and given > 1) or (key == "calls" and given % 1):
            return f"has {key}={given!r}; it must be {BREAKER_FIELDS[key]}"
    return None


def networks(value: Any) -> str | None:
    if not isinstance(value, list | tuple):
        return "must be a list of IP addresses or networks"
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            return f"holds {item!r}, which is not an IP address or network"
    return None


def executor(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be 'inline', 'worker', 'celery' or the dotted path of an executor class"
    try:
        import_string(EXECUTORS.get(value, value))
    except ImportError as exc:
        return f"is {value!r}: not 'inline', 'worker', 'celery' or an importable class ({exc})"
    return None


def dependency_paths(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must map names to dotted paths"
    for name, path in value.items():
        try:
            import_string(path)
        except ImportError as exc:
            return f"[{name!r}] cannot be imported: {exc}"
    return None


def exception_paths(value: Any) -> str | None:
    if not isinstance(value, list | tuple):
        return "must be a list of dotted paths of exception classes"
    for path in value:
        try:
            cls = import_string(path)
        except ImportError as exc:
            return f"names {path!r}, which cannot be imported: {exc}"
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            return f"names {path!r}, which is not an exception class"
    return None


def external_url(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, str) and "://" in value and value.split("://", 1)[0] in TRANSPORTS:
        return None
    schemes = ", ".join(f"{scheme}://" for scheme in TRANSPORTS)
    return f"must be a URL of {schemes} (or empty), not {value!r}"


def external_format(value: Any) -> str | None:
    if value in FORMATS:
        return None
    return f"must be {' or '.join(repr(name) for name in FORMATS)}, not {value!r}"


def uri_reference(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isprintable() and " " not in value:
        return None if value else "must not be empty"
    return f"must be a URI reference such as '/shop' (no spaces), or None, not {value!r}"


def exchange_name(value: Any) -> str | None:
    if isinstance(value, str) and value.strip() and len(value) <= 255:
        return None
    return f"must be an exchange's name (1 to 255 characters), not {value!r}"


def whole_number_or_none(value: Any) -> str | None:
    return None if value is None else whole_number(value)


def subject_prefix(value: Any) -> str | None:
    tokens = value.split(".") if isinstance(value, str) else [""]
    if all(token and not set(token) & set("*> \t\r\n") for token in tokens):
        return None
    return f"must be NATS subject tokens joined by dots (no spaces, * or >), not {value!r}"


def dead_topic(value: Any) -> str | None:
    if isinstance(value, str) and "{channel}" in value and value.strip() == value:
        return None
    return f"must be a topic name holding {{channel}}, such as '{{channel}}.dead', not {value!r}"


def client_properties(value: Any) -> str | None:
    if isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(item, str | int | float | bool)
        for key, item in value.items()
    ):
        return None
    return f"must map librdkafka property names to strings, numbers or booleans, not {value!r}"


def schedules(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(
        isinstance(name, str) and isinstance(spec, dict) for name, spec in value.items()
    ):
        return "must map schedule names to dicts of 'cron', 'message' and the rest"
    return None  # each schedule's own problems: messagebus.E008


EXECUTORS = {
    "inline": "messagebus.executors.inline.InlineExecutor",
    "worker": "messagebus.executors.worker.WorkerExecutor",
    "celery": "messagebus.executors.celery.CeleryExecutor",
}
# MESSAGEBUS["EXTERNAL_URL"]'s scheme -> the transport class (messagebus.external.transports).
TRANSPORTS = {
    "redis": "messagebus.external.transports.redis.RedisTransport",
    "rediss": "messagebus.external.transports.redis.RedisTransport",
    "amqp": "messagebus.external.transports.amqp.AmqpTransport",
    "amqps": "messagebus.external.transports.amqp.AmqpTransport",
    "redis+stream": "messagebus.external.transports.redis_streams.RedisStreamTransport",
    "rediss+stream": "messagebus.external.transports.redis_streams.RedisStreamTransport",
    "nats": "messagebus.external.transports.nats.NatsTransport",
    "kafka": "messagebus.external.transports.kafka.KafkaTransport",
}
# MESSAGEBUS["EXTERNAL_FORMAT"]: how messages to and from other services are written.
FORMATS = ("envelope", "cloudevents")
DEAD_AT_ONCE = [
    "django.db.IntegrityError",
    "django.core.exceptions.ValidationError",
    "messagebus.Reject",
]


class Settings:
    """Typed, lazy access to MESSAGEBUS; validated by the system checks."""

    EXECUTOR = Setting[str](
        "inline", executor, '"inline", "worker", "celery", or a dotted path to an executor class'
    )
    DEPENDENCIES = Setting[dict[str, str]](
        {}, dependency_paths, "handler parameter name -> dotted path of a factory"
    )
    RETRY_ATTEMPTS = Setting[int](3, whole_number, "calls within one run")
    RETRY_WAIT = Setting[float](0.5, seconds, "seconds before the second call, doubling")
    RETRY_WAIT_MAX = Setting[float](10.0, seconds, "the longest wait between calls")
    MAX_DELIVERIES = Setting[int](5, whole_number, "runs before a delivery is dead")
    REDELIVERY_DELAY = Setting[float](30.0, seconds, "seconds before the second run, doubling")
    REDELIVERY_DELAY_MAX = Setting[float](3600.0, seconds, "the longest delay between runs")
    HANDLER_WAIT = Setting[float](
        86400.0, seconds, "a delivery waits this long for a process that has its handler"
    )
    DEAD_AT_ONCE = Setting[list[str]](
        DEAD_AT_ONCE, exception_paths, "exceptions that kill a delivery after one run"
    )
    COMMAND_RETRIES = Setting[int](
        3, whole_number, "runs of a command that hits a serialization failure or deadlock"
    )
    CLAIM_TIMEOUT = Setting[float](300.0, seconds, "a claimed delivery's lease, in seconds")
    BATCH_SIZE = Setting[int](100, whole_number, "deliveries a worker claims at a time")
    BATCH_SECONDS = Setting[float](1.0, seconds, "a batch's transaction commits after this long")
    SWEEP_INTERVAL = Setting[float](
        60.0, seconds, "inline executor: look for overdue deliveries (0: never)"
    )
    WORKER_POLL_INTERVAL = Setting[float](1.0, seconds, "an idle worker or relay sleeps this long")
    HEALTH_MAX_LAG = Setting[float](
        300.0, seconds, "health is degraded when a due delivery waited longer"
    )
    HEALTH_MAX_DEAD = Setting[int](0, at_least_zero, "health is degraded past this many dead")
    HEALTH_TIMEOUT = Setting[float](3.0, seconds, "health: a statement's time limit (PostgreSQL)")
    BREAKER = Setting[bool | dict[str, float] | None](
        None, breaker, "a circuit breaker for every handler delivered after commit: None "
        "(none), True (the defaults) or a dict of rate, window, calls and cool_down; "
        "@handler(breaker=...) overrides it", parse=_breaker_text,
    )  # fmt: skip
    HANDLER_TIMEOUT = Setting[float | None](
        None,
        seconds_or_none,
        "async handlers: cancelled and retried after this long (None: never)",
        parse=_number_or_none,
    )
    SHUTDOWN_GRACE = Setting[float](
        25.0, seconds, "a stopping worker waits this long for running deliveries"
    )
    TRACING = Setting[bool](
        True,
        true_or_false,
        "OpenTelemetry spans, once a tracer provider is set (False: none)",
    )
    PREPARED_STATEMENTS = Setting[bool](
        True, true_or_false, "PostgreSQL: storing an event is a statement the server plans "
        "once per connection (False behind a pooler that cannot keep them, such as "
        "PgBouncer before 1.21 in transaction mode)",
    )  # fmt: skip
    METRICS_ALLOWED_IPS = Setting[list[str]](
        [], networks, "addresses or networks /metrics answers (none: it is off)"
    )
    EXTERNAL_URL = Setting[str | None](
        None,
        external_url,
        "broker for messages to other services (None: publish nothing)",
        parse=_text_or_none,
    )
    EXTERNAL_FORMAT = Setting[str](
        "envelope", external_format, 'messages to and from other services: "envelope" (the '
        'body holds the fields, the ids beside it) or "cloudevents" (CloudEvents 1.0)',
    )  # fmt: skip
    EXTERNAL_SOURCE = Setting[str | None](
        None, uri_reference, 'CloudEvents: the source of the events published (None: "/" and '
        'the top package of the settings module, such as "/mysite")', parse=_text_or_none,
    )  # fmt: skip
    INBOUND_MAX_BYTES = Setting[int](
        1_048_576, whole_number, "bytes: a larger inbound message is dead-lettered, not decoded"
    )
    SCHEDULES = Setting[dict[str, dict[str, Any]]](
        {}, schedules, "periodic schedules: name -> cron, message, kwargs, timezone, missed"
    )
    AMQP_EXCHANGE = Setting[str](
        "messagebus", exchange_name, "RabbitMQ: the topic exchange shared with other services"
    )
    REDIS_STREAM_MAXLEN = Setting[int | None](
        None, whole_number_or_none,
        "Redis Streams: entries a stream keeps, about (XADD MAXLEN ~); None: every entry",
        parse=lambda text: None if text.strip().lower() in ("", "none") else _integer(text),
    )  # fmt: skip
    REDIS_STREAM_CLAIM_IDLE = Setting[float](
        60.0, seconds, "Redis Streams: a message read but not acknowledged for this long "
        "is taken over from its consumer (XAUTOCLAIM)",
    )  # fmt: skip
    NATS_PREFIX = Setting[str](
        "messagebus", subject_prefix, "NATS: a channel's subject is <prefix>.<channel>"
    )
    NATS_CREATE_STREAM = Setting[bool](
        True, true_or_false,
        "NATS: create the JetStream stream of <prefix>.> if none takes it (False: one must)",
    )  # fmt: skip
    NATS_ACK_WAIT = Setting[float](
        30.0, seconds, "NATS: a message not acknowledged this long after delivery is "
        "delivered again (set when the durable consumer is created)",
    )  # fmt: skip
    NATS_NAK_DELAY = Setting[float](
        5.0, seconds, "NATS: a message whose handling met an outage is delivered again after this"
    )
    KAFKA_DEAD_TOPIC = Setting[str](
        "{channel}.dead", dead_topic, "Kafka: the topic a channel's dead messages go to"
    )
    KAFKA_SESSION_TIMEOUT = Setting[float](
        45.0, seconds, "Kafka: a consumer not heard from this long leaves its group, and "
        "its partitions go to the others",
    )  # fmt: skip
    KAFKA_OPTIONS = Setting[dict[str, Any]](
        {}, client_properties,
        "Kafka: more librdkafka properties for the producer and the consumers "
        "(security.protocol, sasl.*, ssl.*)",
    )  # fmt: skip

    @property
    def raw(self) -> dict[str, Any]:
        value = getattr(django_settings, "MESSAGEBUS", {})
        return value if isinstance(value, dict) else {}

    @classmethod
    def declared(cls) -> Iterator[Setting[Any]]:
        """Every key, in the order declared."""
        for value in vars(cls).values():
            if isinstance(value, Setting):
                yield value


settings = Settings()


def defaults() -> dict[str, Any]:
    return {setting.key: setting.default for setting in Settings.declared()}
