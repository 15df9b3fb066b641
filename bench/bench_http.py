"""Allocations per second over HTTP: the bus against a bare DRF view.

    make bench                                  # SQLite
    DATABASE_URL=postgres://... make bench      # PostgreSQL

gunicorn (2 sync workers) serves the project on 127.0.0.1 from a throwaway
test database. Client threads POST allocations of one unit to
/api/allocations (bus: a command, an outbox row, the read model updated after
commit) and to /bench/allocations (the same ORM work in one transaction), in
alternating rounds; the ratio is the median of each round's pair.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from allocation.models import Batch, Product  # noqa: E402
from tests.conftest import database_url  # noqa: E402

SKUS = [f"BENCH-{n}" for n in range(20)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(port: int, path: str, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def load(port: int, path: str, seconds: float, clients: int, orders: count[int]) -> float:
    """Requests per second over ``seconds``, from ``clients`` threads."""
    done = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(slot: int) -> None:
        while time.perf_counter() < deadline:
            n = next(orders)
            body = json.dumps({"orderid": f"o{n}", "sku": SKUS[n % len(SKUS)], "qty": 1}).encode()
            status = post(port, path, body)
            if status != 201:
                raise RuntimeError(f"{path} answered {status}")
            done[slot] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def serve(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "bench.settings"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "--workers", "2",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("gunicorn did not start")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="length of a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    config = setup_databases(verbosity=0, interactive=False)
    try:
        for sku in SKUS:
            product = Product.objects.create(sku=sku)
            Batch.objects.create(
                reference=f"{sku}-stock", product=product, purchased_quantity=10**9
            )
        port = free_port()
        server = serve(port)
        try:
            orders = count()
            load(port, "/api/allocations", 1, args.clients, orders)  # warm up both
            load(port, "/bench/allocations", 1, args.clients, orders)
            bus, bare = [], []
            for _ in range(args.rounds):
                bus.append(load(port, "/api/allocations", args.seconds, args.clients, orders))
                bare.append(load(port, "/bench/allocations", args.seconds, args.clients, orders))
        finally:
            server.terminate()
            server.wait(timeout=30)
        b, h = statistics.median(bus), statistics.median(bare)
        ratio = statistics.median(x / y for x, y in zip(bus, bare, strict=True))
        print(f"HTTP allocations, {connection.vendor}, gunicorn 2 workers, {args.clients} clients, "
              f"{args.rounds} rounds x {args.seconds:.0f}s")  # fmt: skip
        print(f"  bus {b:.0f} req/s, bare view {h:.0f} req/s: ratio {ratio:.2f}x (target >= 0.75x)")
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
