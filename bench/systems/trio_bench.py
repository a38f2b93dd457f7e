"""Bare trio: the floor, not a peer. The fastest code for each row that can be written on trio.

    python bench/systems/trio_bench.py --row a --n 20000 --warmup 2000 --out result.json

- a, b: request/reply as a direct hand-off between tasks with `trio.lowlevel`
  (`wait_task_rescheduled` / `reschedule`): the client appends (task, request) to a
  deque and wakes the server if it is parked; the server answers every queued request
  by rescheduling its client with the reply. No names, no timeouts, no monitors, no
  exit semantics: nothing a server needs, only the two context switches.
- c: a memory channel, two ways: one ``await receive()`` per message (each one a
  scheduling round trip), and a batch drain (``receive_nowait()`` until empty, then one
  ``await receive()``).
- d (for reference, no target): 10,000 bare tasks parked, then cancelled.
- f (for reference, no target): a plain dict.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import trio
from _common import Metrics, Params, main, name_table_costs, perf_counter, rss_bytes, settle
from outcome import Value
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled


def _aborted(_raise_cancel: Any) -> Abort:
    return Abort.SUCCEEDED


class Handoff:
    """The server's side of the hand-off: pending (task, request) pairs and the parked server task."""

    __slots__ = ("parked", "pending")

    def __init__(self) -> None:
        self.pending: deque[tuple[Task, object]] = deque()
        self.parked: Task | None = None

    async def serve(self) -> None:
        pending = self.pending
        while True:
            while pending:
                task, request = pending.popleft()
                reschedule(task, Value(request))  # echo: the reply is the request
            self.parked = current_task()
            await wait_task_rescheduled(self._abort)

    def _abort(self, _raise_cancel: Any) -> Abort:
        self.parked = None
        return Abort.SUCCEEDED

    async def call(self, request: object) -> Any:
        self.pending.append((current_task(), request))
        parked = self.parked
        if parked is not None:
            self.parked = None
            reschedule(parked)
        return await wait_task_rescheduled(_aborted)


async def row_a(p: Params) -> Metrics:
    box = Handoff()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.serve)
        await trio.lowlevel.checkpoint()
        call = box.call
        settle()
        t0 = perf_counter()
        for i in range(p.n):
            await call(i)
        elapsed = perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"calls_per_s": p.n / elapsed, "us_per_call": elapsed / p.n * 1e6}


async def row_b(p: Params) -> Metrics:
    box = Handoff()
    per_client = p.n // p.clients

    async def client() -> None:
        call = box.call
        for i in range(per_client):
            await call(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.serve)
        await trio.lowlevel.checkpoint()
        settle()
        t0 = perf_counter()
        async with trio.open_nursery() as clients:
            for _ in range(p.clients):
                clients.start_soon(client)
        elapsed = perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"calls_per_s": per_client * p.clients / elapsed}


class _Get:
    """The final "call" of row c: the receiver puts the count here and sets the event."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.count = 0


async def _one_receive(receive: trio.MemoryReceiveChannel[Any]) -> None:
    count = 0
    while True:
        message = await receive.receive()
        if type(message) is _Get:
            message.count = count
            message.event.set()
        else:
            count += message


async def _batch_drain(receive: trio.MemoryReceiveChannel[Any]) -> None:
    count = 0
    receive_nowait = receive.receive_nowait
    while True:
        message = await receive.receive()
        while True:
            if type(message) is _Get:
                message.count = count
                message.event.set()
            else:
                count += message
            try:
                message = receive_nowait()
            except trio.WouldBlock:
                break


async def _casts(p: Params, receiver: Any) -> float:
    send, receive = trio.open_memory_channel[Any](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver, receive)
        await trio.lowlevel.checkpoint()
        send_nowait = send.send_nowait
        settle()
        t0 = perf_counter()
        for _ in range(p.n):
            send_nowait(1)
        get = _Get()
        send_nowait(get)
        await get.event.wait()
        elapsed = perf_counter() - t0
        assert get.count == p.n, get.count
        nursery.cancel_scope.cancel()
    return p.n / elapsed


async def row_c(p: Params) -> Metrics:
    return {"casts_per_s": await _casts(p, _one_receive), "casts_per_s_drain": await _casts(p, _batch_drain)}


async def row_d(p: Params) -> Metrics:
    started = 0
    all_started = trio.Event()

    async def task() -> None:
        nonlocal started
        started += 1
        if started == p.n:
            all_started.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as outer:
        settle()
        rss0 = rss_bytes()
        t0 = perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(p.n):
                nursery.start_soon(task)
            await all_started.wait()
            t1 = perf_counter()
            settle()
            rss1 = rss_bytes()
            t2 = perf_counter()
            nursery.cancel_scope.cancel()
        t3 = perf_counter()
        outer.cancel_scope.cancel()
    return {
        "starts_per_s": p.n / (t1 - t0),
        "stops_per_s": p.n / (t3 - t2),
        "rss_bytes_per_server": (rss1 - rss0) / p.n,
    }


async def row_f(p: Params) -> Metrics:
    targets = [object() for _ in range(p.n)]
    names = [f"name-{i}" for i in range(p.n)]

    def register_lookup(names: list[str], targets: list[object]) -> tuple[float, float]:
        table: dict[str, object] = {}
        t0 = perf_counter()
        for name, target in zip(names, targets, strict=True):
            table[name] = target
        t1 = perf_counter()
        get = table.get
        for name in names:
            get(name)
        t2 = perf_counter()
        return t1 - t0, t2 - t1

    metrics = name_table_costs(p, names, targets, register_lookup, lambda: None)  # each pass builds its own dict
    await trio.lowlevel.checkpoint()
    return metrics


ROWS = {"a": row_a, "b": row_b, "c": row_c, "d": row_d, "f": row_f}


def measure(p: Params) -> Metrics:
    if p.row not in ROWS:
        return {}
    return trio.run(ROWS[p.row], p)


if __name__ == "__main__":
    main(measure, {"trio": trio.__version__})
