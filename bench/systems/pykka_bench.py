"""pykka's side of the benchmark (pykka 4, one thread per actor), run by bench/run.py.

    python bench/systems/pykka_bench.py --row a --n 20000 --warmup 2000 --out result.json

Calls are ``ActorRef.ask(message)`` (blocking until the reply), casts are
``ActorRef.tell(message)``. Row b's 100 concurrent clients are 100 threads. Row d
starts actors (pykka has no supervisor) and counts ``on_start`` calls, then stops them
all at once (``stop(block=False)`` on each, then waits for every stop). pykka has no
supervisor and no names, so it has no rows e and f.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka
from _common import Metrics, Params, main, perf_counter, rss_bytes, settle


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class Counter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "get":
            return self.count
        self.count += message
        return None


class _Started:
    """Row d: counts the actors whose on_start has run."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.lock = threading.Lock()
        self.event = threading.Event()

    def add(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.n:
                self.event.set()


class Worker(pykka.ThreadingActor):
    def __init__(self, started: _Started) -> None:
        super().__init__()
        self.started = started

    def on_start(self) -> None:
        self.started.add()


def row_a(p: Params) -> Metrics:
    ref = Echo.start()
    ask = ref.ask
    settle()
    t0 = perf_counter()
    for i in range(p.n):
        ask(i)
    elapsed = perf_counter() - t0
    ref.stop()
    return {"calls_per_s": p.n / elapsed, "us_per_call": elapsed / p.n * 1e6}


def row_b(p: Params) -> Metrics:
    ref = Echo.start()
    per_client = p.n // p.clients
    go = threading.Event()

    def client() -> None:
        ask = ref.ask
        go.wait()
        for i in range(per_client):
            ask(i)

    threads = [threading.Thread(target=client) for _ in range(p.clients)]
    for thread in threads:
        thread.start()
    settle()
    t0 = perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    elapsed = perf_counter() - t0
    ref.stop()
    return {"calls_per_s": per_client * p.clients / elapsed}


def row_c(p: Params) -> Metrics:
    ref = Counter.start()
    tell = ref.tell
    settle()
    t0 = perf_counter()
    for _ in range(p.n):
        tell(1)
    count = ref.ask("get")
    elapsed = perf_counter() - t0
    assert count == p.n, count
    ref.stop()
    return {"casts_per_s": p.n / elapsed}


def row_d(p: Params) -> Metrics:
    started = _Started(p.n)
    settle()
    rss0 = rss_bytes()
    t0 = perf_counter()
    refs = [Worker.start(started) for _ in range(p.n)]
    started.event.wait()
    t1 = perf_counter()
    settle()
    rss1 = rss_bytes()
    t2 = perf_counter()
    stopping = [ref.stop(block=False) for ref in refs]
    for future in stopping:
        future.get()
    t3 = perf_counter()
    return {
        "starts_per_s": p.n / (t1 - t0),
        "stops_per_s": p.n / (t3 - t2),
        "rss_bytes_per_server": (rss1 - rss0) / p.n,
    }


ROWS = {"a": row_a, "b": row_b, "c": row_c, "d": row_d}


def measure(p: Params) -> Metrics:
    if p.row not in ROWS:
        return {}
    return ROWS[p.row](p)


if __name__ == "__main__":
    import importlib.metadata

    main(measure, {"pykka": importlib.metadata.version("pykka")})
