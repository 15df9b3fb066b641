"""How the bus's long-running processes take SIGTERM and SIGINT (``Process.on_signal``)."""

from __future__ import annotations

import signal
import threading

import pytest

from messagebus.processes.consumer import Consumer
from messagebus.processes.worker import Worker


@pytest.mark.parametrize("make", [Consumer, Worker], ids=["consumer", "worker"])
def test_a_signal_arriving_while_the_first_is_handled_is_dropped_not_waited_on(make):
    """A process group signalled twice at once (a shell's ``kill 0`` and its parent's
    ``killpg``): the second handler runs inside the first, while ``stopping.set()``
    holds its lock. It must not wait for that lock."""
    process = make()
    lock = threading.Lock()  # what stopping.set() holds
    stops = []

    def stop(*args: object) -> None:
        stops.append(args)
        with lock:
            process.on_signal(signal.SIGTERM, None)  # the second signal, inside the first
        process.stopping.set()

    process.stop = stop
    first = threading.Thread(target=process.on_signal, args=(signal.SIGTERM, None), daemon=True)
    first.start()
    first.join(5)
    assert not first.is_alive(), "the second signal waited for the first"
    assert process.stopping.is_set() and len(stops) == 1
    process.on_signal(signal.SIGINT, None)  # a later signal is handled again
    assert len(stops) == 2


def test_a_worker_asked_twice_in_turn_still_stops_at_once():
    worker = Worker()
    worker.on_signal(signal.SIGTERM, None)
    assert worker.stopping.is_set()
    with pytest.raises(SystemExit, match="stopped at once"):
        worker.on_signal(signal.SIGTERM, None)
