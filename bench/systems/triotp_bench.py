"""triotp's side of the benchmark (triotp 0.2.1 on its own pinned trio), run by bench/run.py.

    python bench/systems/triotp_bench.py --row a --n 20000 --warmup 2000 --out result.json

triotp's API is module based: a gen_server is a module with ``init``,
``handle_call(message, caller, state)`` and ``handle_cast(message, state)``, started
with ``gen_server.start(module, init_arg, name)`` (which runs the loop in the calling
task, so it is started with ``nursery.start_soon``), and reached by name with
``gen_server.call(name, payload)`` / ``gen_server.cast(name, payload)``: a server's
mailbox id stays inside ``gen_server.start``, so a name is the only public address
(and ``mailbox.send`` looks a name up first even when given an id). Rows a-c therefore
report under the ``*_name`` metrics, beside otpy's calls and casts by name. Everything
runs inside ``triotp.node.run``, whose application here is this benchmark; the node's
logging is off (``LogLevel.NONE``, its default).

triotp has no start handshake: ``start`` returns only when the server exits, and a
name is usable once the server task has run far enough to register it, so the rows
wait for the registration (rows a-c, e) or count ``init`` calls (row d).
"""

from __future__ import annotations

import types
from typing import Any

import trio
from _common import Metrics, Params, median, name_table_costs, perf_counter, quantile, rss_bytes, settle
from _common import main as common_main
from triotp import application, dynamic_supervisor, gen_server, mailbox, node, supervisor


def _module(name: str, **functions: Any) -> types.ModuleType:
    """A callback module, as triotp expects (it looks the callbacks up with getattr)."""
    module = types.ModuleType(name)
    for key, value in functions.items():
        setattr(module, key, value)
    return module


async def _init_none(_arg: Any) -> Any:
    return None


async def _echo_call(message: Any, _caller: Any, state: Any) -> Any:
    return gen_server.Reply(payload=message), state


async def _init_zero(_arg: Any) -> Any:
    return 0


async def _counter_cast(message: Any, state: int) -> Any:
    return gen_server.NoReply(), state + message


async def _counter_call(_message: Any, _caller: Any, state: int) -> Any:
    return gen_server.Reply(payload=state), state


class _Started:
    """Row d: counts the workers whose init has run."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.event = trio.Event()


async def _worker_init(started: _Started) -> Any:
    started.count += 1
    if started.count == started.n:
        started.event.set()
    return {"ident": started.count}


async def _victim_cast(_message: Any, _state: Any) -> Any:
    raise RuntimeError("crash")


async def _terminate_quietly(_reason: Any, _state: Any) -> None:
    return None


Echo = _module("bench_echo", init=_init_none, handle_call=_echo_call)
Counter = _module("bench_counter", init=_init_zero, handle_cast=_counter_cast, handle_call=_counter_call)
Worker = _module("bench_worker", init=_worker_init)
# triotp logs a crash with logger.exception unless the module defines terminate; the
# node's handler is a NullHandler either way, and terminate spares triotp that work.
Victim = _module(
    "bench_victim", init=_init_none, handle_call=_echo_call, handle_cast=_victim_cast, terminate=_terminate_quietly
)


async def _registered(name: str) -> None:
    while mailbox._resolve(name) is None:
        await trio.lowlevel.checkpoint()


async def row_a(p: Params) -> Metrics:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, Echo, None, "echo")
        await _registered("echo")
        call = gen_server.call
        settle()
        t0 = perf_counter()
        for i in range(p.n):
            await call("echo", i)
        elapsed = perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"calls_per_s_name": p.n / elapsed, "us_per_call_name": elapsed / p.n * 1e6}


async def row_b(p: Params) -> Metrics:
    per_client = p.n // p.clients
    call = gen_server.call

    async def client() -> None:
        for i in range(per_client):
            await call("echo", i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, Echo, None, "echo")
        await _registered("echo")
        settle()
        t0 = perf_counter()
        async with trio.open_nursery() as clients:
            for _ in range(p.clients):
                clients.start_soon(client)
        elapsed = perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"calls_per_s_name": per_client * p.clients / elapsed}


async def row_c(p: Params) -> Metrics:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, Counter, None, "counter")
        await _registered("counter")
        cast = gen_server.cast
        settle()
        t0 = perf_counter()
        for _ in range(p.n):
            await cast("counter", 1)
        count = await gen_server.call("counter", "get")
        elapsed = perf_counter() - t0
        assert count == p.n, count
        nursery.cancel_scope.cancel()
    return {"casts_per_s_name": p.n / elapsed}


async def row_d(p: Params) -> Metrics:
    started = _Started(p.n)
    opts = supervisor.options()
    transient = supervisor.restart_strategy.TRANSIENT
    async with trio.open_nursery() as pool:
        await pool.start(dynamic_supervisor.start, opts, "pool")
        settle()
        rss0 = rss_bytes()
        t0 = perf_counter()
        for i in range(p.n):
            spec = supervisor.child_spec(
                id=f"worker-{i}", task=gen_server.start, args=[Worker, started], restart=transient
            )
            await dynamic_supervisor.start_child("pool", spec)
        await started.event.wait()  # start_child returns before the child runs: wait for every init
        t1 = perf_counter()
        settle()
        rss1 = rss_bytes()
        t2 = perf_counter()
        pool.cancel_scope.cancel()  # triotp stops a supervisor's children by cancelling it
    t3 = perf_counter()
    return {
        "starts_per_s": p.n / (t1 - t0),
        "stops_per_s": p.n / (t3 - t2),
        "rss_bytes_per_server": (rss1 - rss0) / p.n,
    }


async def row_e(p: Params) -> Metrics:
    children = [supervisor.child_spec(id="victim", task=gen_server.start, args=[Victim, None, "victim"])]
    opts = supervisor.options(max_restarts=10 * p.n + 10, max_seconds=1)
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.start, children, opts)
        await _registered("victim")
        call, cast, checkpoint = gen_server.call, gen_server.cast, trio.lowlevel.checkpoint
        settle()
        for _ in range(p.n):
            old = mailbox._resolve("victim")
            t0 = perf_counter()
            await cast("victim", "crash")
            while True:
                try:
                    # A call that reaches the old mailbox while it is being destroyed fails
                    # with BrokenResourceError; one to a name not yet registered again
                    # fails with MailboxDoesNotExist.
                    await call("victim", "ping")
                except (mailbox.MailboxDoesNotExist, trio.BrokenResourceError, trio.ClosedResourceError):
                    await checkpoint()
                    continue
                break
            samples.append(perf_counter() - t0)
            assert mailbox._resolve("victim") != old
        nursery.cancel_scope.cancel()
    return {
        "restart_us": median(samples) * 1e6,
        "restart_us_p90": quantile(samples, 0.9) * 1e6,
        "restart_us_min": min(samples) * 1e6,
    }


async def row_f(p: Params) -> Metrics:
    # Each name gets a mailbox of its own (made before the clock starts); lookups use
    # mailbox._resolve, the lookup that send/call/cast do (triotp has no public whereis).
    mids = [mailbox.create() for _ in range(p.n)]
    names = [f"name-{i}" for i in range(p.n)]
    name_registry = mailbox.context_name_registry.get()

    def register_lookup(names: list[str], mids: list[Any]) -> tuple[float, float]:
        register, resolve = mailbox.register, mailbox._resolve
        t0 = perf_counter()
        for name, mid in zip(names, mids, strict=True):
            register(mid, name)
        t1 = perf_counter()
        for name in names:
            resolve(name)
        t2 = perf_counter()
        return t1 - t0, t2 - t1

    metrics = name_table_costs(p, names, mids, register_lookup, name_registry.clear)
    assert len(name_registry) == p.n
    name_registry.clear()
    await trio.lowlevel.checkpoint()
    return metrics


ROWS = {"a": row_a, "b": row_b, "c": row_c, "d": row_d, "e": row_e, "f": row_f}


class _Run:
    """The application that node.run starts: it runs one row and keeps its result."""

    def __init__(self, p: Params) -> None:
        self.params = p
        self.metrics: Metrics = {}
        self.error: BaseException | None = None

    async def start(self, _arg: Any) -> None:
        try:
            self.metrics = await ROWS[self.params.row](self.params)
        except Exception as exc:  # kept for measure(): a transient app that raises would be restarted
            self.error = exc


def measure(p: Params) -> Metrics:
    run = _Run(p)
    app = _module("bench_app", start=run.start)
    # permanent=False: the application is not restarted when it returns, so the node stops.
    node.run(apps=[application.app_spec(module=app, start_arg=None, permanent=False)])
    if run.error is not None:
        raise run.error
    if not run.metrics:
        raise RuntimeError("the triotp node stopped before the row finished")
    return run.metrics


if __name__ == "__main__":
    import importlib.metadata

    common_main(measure, {"triotp": importlib.metadata.version("triotp"), "trio": trio.__version__})
