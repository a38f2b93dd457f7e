"""otpy's side of the benchmark: one row per process, run by bench/run.py.

    python bench/systems/otpy_bench.py --row a --n 20000 --warmup 2000 --out result.json

Each row uses otpy's public API the way an application would (`start_link`, `call`,
`cast`, `DynamicSupervisor.start_child`, `Supervisor`, `stop`), with the defaults an
application gets (a call has its default 5 s timeout). Rows a-c reach the server both
by pid and by its registered name (triotp can only use names), each way in two
alternated halves of the row, and report both. Row f uses the local name table
(`otpy._process.register` / `otpy.whereis`) and, when it exists, `otpy.Registry`.
Crash reports are silenced (structlog filtered at CRITICAL), as every peer runs with
its logging off.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
import trio
from _common import Metrics, Params, main, median, name_table_costs, perf_counter, quantile, rss_bytes, settle

import otpy
from otpy import _process

structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
    cache_logger_on_first_use=True,
)


class Echo(otpy.GenServer):
    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return request


class Counter(otpy.GenServer):
    async def init(self) -> None:
        self.count = 0

    async def handle_cast(self, request: Any) -> None:
        self.count += request

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.count


class Worker(otpy.GenServer):
    """Row d's server: the smallest useful one, with a little state."""

    async def init(self, ident: int) -> None:
        self.ident = ident


class Victim(otpy.GenServer):
    """Row e's server: answers pings, crashes on the cast "crash"."""

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return request

    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash")


async def _call_loop(server: otpy.Server, n: int) -> float:
    """``n`` sequential calls to ``server`` (a pid or a name); the seconds they took."""
    call = otpy.call
    t0 = perf_counter()
    for i in range(n):
        await call(server, i)
    return perf_counter() - t0


async def row_a(p: Params) -> Metrics:
    # By pid and by name (triotp can only call by name), each in two halves, alternated,
    # so that neither addressing always runs first.
    half = p.n // 2
    elapsed = {"pid": 0.0, "name": 0.0}
    async with trio.open_nursery() as nursery:
        pid = await Echo.start_link(name="echo", nursery=nursery)
        settle()
        for _ in range(2):
            elapsed["pid"] += await _call_loop(pid, half)
            elapsed["name"] += await _call_loop("echo", half)
        await otpy.stop(pid)
    n = 2 * half
    return {
        "calls_per_s": n / elapsed["pid"],
        "us_per_call": elapsed["pid"] / n * 1e6,
        "calls_per_s_name": n / elapsed["name"],
        "us_per_call_name": elapsed["name"] / n * 1e6,
    }


async def _clients(server: otpy.Server, clients: int, per_client: int) -> float:
    """``clients`` concurrent tasks, each making ``per_client`` calls; the seconds until all are done."""
    call = otpy.call

    async def client() -> None:
        for i in range(per_client):
            await call(server, i)

    t0 = perf_counter()
    async with trio.open_nursery() as clients_nursery:
        for _ in range(clients):
            clients_nursery.start_soon(client)
    return perf_counter() - t0


async def row_b(p: Params) -> Metrics:
    half = p.n // p.clients // 2
    elapsed = {"pid": 0.0, "name": 0.0}
    async with trio.open_nursery() as nursery:
        pid = await Echo.start_link(name="echo", nursery=nursery)
        settle()
        for _ in range(2):
            elapsed["pid"] += await _clients(pid, p.clients, half)
            elapsed["name"] += await _clients("echo", p.clients, half)
        await otpy.stop(pid)
    n = 2 * half * p.clients
    return {"calls_per_s": n / elapsed["pid"], "calls_per_s_name": n / elapsed["name"]}


async def row_c(p: Params) -> Metrics:
    half = p.n // 2
    elapsed = {"pid": 0.0, "name": 0.0}
    async with trio.open_nursery() as nursery:
        pid = await Counter.start_link(name="counter", nursery=nursery)
        cast = otpy.cast
        expected = 0
        settle()
        for _ in range(2):
            for how, server in (("pid", pid), ("name", "counter")):
                t0 = perf_counter()
                for _ in range(half):
                    cast(server, 1)
                count = await otpy.call(server, "get")
                elapsed[how] += perf_counter() - t0
                expected += half
                assert count == expected, (count, expected)
        await otpy.stop(pid)
    n = 2 * half
    return {"casts_per_s": n / elapsed["pid"], "casts_per_s_name": n / elapsed["name"]}


async def row_d(p: Params) -> Metrics:
    start_child = otpy.DynamicSupervisor.start_child
    async with trio.open_nursery() as nursery:
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        settle()
        rss0 = rss_bytes()
        t0 = perf_counter()
        for i in range(p.n):
            await start_child(sup, Worker.child_spec(i))
        t1 = perf_counter()
        settle()
        rss1 = rss_bytes()
        counts = await otpy.DynamicSupervisor.count_children(sup)
        assert counts.active == p.n, counts
        t2 = perf_counter()
        await otpy.stop(sup)  # all children get "shutdown" at once, then are waited for
        t3 = perf_counter()
    return {
        "starts_per_s": p.n / (t1 - t0),
        "stops_per_s": p.n / (t3 - t2),
        "rss_bytes_per_server": (rss1 - rss0) / p.n,
    }


async def row_e(p: Params) -> Metrics:
    children = [Victim.child_spec(name="victim")]
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        sup = await otpy.Supervisor.start_link(
            children, strategy="one_for_one", max_restarts=10 * p.n + 10, max_seconds=1, nursery=nursery
        )
        call, cast, checkpoint = otpy.call, otpy.cast, trio.lowlevel.checkpoint
        settle()
        for _ in range(p.n):
            old = otpy.whereis("victim")
            t0 = perf_counter()
            cast("victim", "crash")
            while True:
                try:
                    await call("victim", "ping")
                except (otpy.NoProcess, otpy.ServerExited):
                    await checkpoint()
                    continue
                break
            samples.append(perf_counter() - t0)
            assert otpy.whereis("victim") is not old
        await otpy.stop(sup)
    return {
        "restart_us": median(samples) * 1e6,
        "restart_us_p90": quantile(samples, 0.9) * 1e6,
        "restart_us_min": min(samples) * 1e6,
    }


def _register_lookup(names: list[str], pids: list[otpy.Pid]) -> tuple[float, float]:
    """Register every name, then look every one up; return the seconds of each phase."""
    register, whereis = _process.register, otpy.whereis
    t0 = perf_counter()
    for name, pid in zip(names, pids, strict=True):
        register(name, pid)
    t1 = perf_counter()
    for name in names:
        whereis(name)
    t2 = perf_counter()
    return t1 - t0, t2 - t1


async def row_f(p: Params) -> Metrics:
    # Name targets are pids of no running process: the row measures the name table,
    # not process creation (the pids are made before the clock starts).
    pids = [_process.Pid(None, None, False) for _ in range(p.n)]
    names = [f"name-{i}" for i in range(p.n)]
    table = _process._name_table()
    metrics = name_table_costs(p, names, pids, _register_lookup, table.clear)
    assert len(otpy.registered()) == p.n
    table.clear()
    registry_type = getattr(otpy, "Registry", None)
    if registry_type is not None:
        metrics.update(await _registry(registry_type, names, pids))
    return metrics


async def _registry(registry_type: Any, names: list[str], pids: list[otpy.Pid]) -> Metrics:
    """otpy.Registry through the ViaRegistry protocol it implements (register_name / whereis_name)."""
    async with trio.open_nursery() as nursery:
        started = await registry_type.start_link(keys="unique", nursery=nursery)
        # The registry's server object, which implements ViaRegistry (otpy.get_state
        # is the public way to reach it from outside the process).
        registry = started if isinstance(started, otpy.ViaRegistry) else await otpy.get_state(started)
        if not isinstance(registry, otpy.ViaRegistry):
            nursery.cancel_scope.cancel()
            return {}
        settle()
        t0 = perf_counter()
        for name, pid in zip(names, pids, strict=True):
            registry.register_name(name, pid)
        t1 = perf_counter()
        for name in names:
            registry.whereis_name(name)
        t2 = perf_counter()
        nursery.cancel_scope.cancel()
    return {"registry_register_us": (t1 - t0) / len(names) * 1e6, "registry_lookup_us": (t2 - t1) / len(names) * 1e6}


ROWS = {"a": row_a, "b": row_b, "c": row_c, "d": row_d, "e": row_e, "f": row_f}


def measure(p: Params) -> Metrics:
    return trio.run(ROWS[p.row], p)


if __name__ == "__main__":
    main(measure, {"otpy": otpy.__version__, "otpy_file": otpy.__file__, "trio": trio.__version__})
