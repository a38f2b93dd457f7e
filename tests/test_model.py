"""A supervisor of counters, driven by Hypothesis programs and checked against a pure model of OTP's supervisor.

The model follows OTP 25's supervisor.erl: the three strategies, the three restart types,
and restarts that fail (a child whose ``init`` raises while it is being restarted): each
attempt counts towards the intensity, a group restart stops and starts its group again
from the failed child (``rest_for_one``) or whole (``one_for_all``), and the attempts go
on until they succeed or the supervisor gives up.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import otpy

MAX_RESTARTS = 3
MAX_SECONDS = 5

# --- the system under test ------------------------------------------------------------------


class Counter(otpy.GenServer):
    """A counter that can be told to crash or to stop normally, and whose start can be made to fail."""

    async def init(self, index: int, inits: Inits) -> None:
        if inits.failing.get(index, 0) > 0:
            inits.failing[index] -= 1
            raise RuntimeError(f"init of {name(index)} fails on purpose")
        inits.started[index] = inits.started.get(index, 0) + 1
        self.count = 0

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case "get":
                return self.count
            case ("add", n):
                self.count += n
                return self.count
        raise ValueError(request)

    async def handle_cast(self, request: Any) -> otpy.Stop | None:
        match request:
            case "inc":
                self.count += 1
            case "crash":
                raise RuntimeError("crash")
            case "stop_normal":
                return otpy.Stop("normal")
        return None


def name(i: int) -> str:
    return f"c{i}"


@attrs.define
class Inits:
    """Shared by the test and its counters: which inits are to fail, how often each counter started."""

    failing: dict[int, int] = attrs.Factory(dict)  # how many of a child's next inits fail
    started: dict[int, int] = attrs.Factory(dict)  # how many times each child's init succeeded


def spec(i: int, restart: str, inits: Inits) -> otpy.ChildSpec:
    return Counter.child_spec(i, inits, name=name(i), restart=restart)  # type: ignore[arg-type]


# --- the model ------------------------------------------------------------------------------

Outcome = tuple[str, Any]  # ("ok", value) or ("error", exception type)
OK: Outcome = ("ok", None)


def _note(what: str) -> None:
    """Counted in pytest's --hypothesis-show-statistics, to see what the programs reach."""
    if currently_in_test_context():
        event(what)


@attrs.define
class Model:
    """What OTP says the supervisor and its counters look like."""

    restart_types: list[str]
    strategy: str = "one_for_one"
    order: list[int] = attrs.Factory(list)  # child indexes in start order
    running: dict[int, bool] = attrs.Factory(dict)
    counts: dict[int, int] = attrs.Factory(dict)
    inits: Inits = attrs.Factory(Inits)
    restarts: list[int] = attrs.Factory(list)  # whole seconds of the restarts in the window
    now: float = 0.0
    alive: bool = True

    def __attrs_post_init__(self) -> None:
        for i in range(len(self.restart_types)):
            self.order.append(i)
            self._started(i)

    def _started(self, i: int) -> None:
        self.running[i], self.counts[i] = True, 0
        self.inits.started[i] = self.inits.started.get(i, 0) + 1

    def _remove(self, i: int) -> None:
        self.order.remove(i)
        del self.running[i], self.counts[i]

    def _init_fails(self, i: int) -> bool:
        if self.inits.failing.get(i, 0) > 0:
            self.inits.failing[i] -= 1
            return True
        return False

    def _exit(self, i: int, normal: bool) -> None:
        restart = self.restart_types[i]
        if restart == "temporary":
            self._remove(i)
        elif restart == "transient" and normal:
            self.running[i] = False
        else:
            self._restart(i)

    def _add_restart(self) -> bool:
        """supervisor:add_restart/1: False when this restart is one too many."""
        now = math.floor(self.now)
        self.restarts = [t for t in self.restarts if t >= now - MAX_SECONDS] + [now]
        return len(self.restarts) <= MAX_RESTARTS

    def _restart(self, i: int) -> None:
        """supervisor:restart/2 for child i, then each try_again_restart until one attempt succeeds."""
        while True:
            if not self._add_restart():
                _note(f"{self.strategy}: the supervisor gave up")
                self.alive = False
                return
            if self.strategy == "one_for_one":
                group = [i]
            elif self.strategy == "one_for_all":
                group = list(self.order)
            else:  # rest_for_one: the child and those started after it
                group = self.order[self.order.index(i) :]
            for child in group:  # terminate_children: temporary ones are removed
                if self.restart_types[child] == "temporary":
                    self._remove(child)
                else:
                    self.running[child] = False
            failed = None
            for child in group:  # start_children, in start order, stopping at the first failure
                if child not in self.running:
                    continue
                if self._init_fails(child):
                    failed = child
                    break
                self._started(child)
            _note(f"{self.strategy}: a restart of {len(group)} children")
            if failed is None:
                return
            _note(f"{self.strategy}: a restart attempt failed")
            i = failed  # try again from the child that failed to start

    def is_running(self, i: int) -> bool:
        return self.alive and self.running.get(i, False)

    def apply(self, op: tuple[Any, ...]) -> Outcome:
        kind, arg = op[0], op[1]
        if kind == "sleep":
            self.now += arg
            return OK
        i = arg
        if kind == "break":
            self.inits.failing[i] = self.inits.failing.get(i, 0) + op[2]
            return OK
        if kind in ("add", "get"):
            if not self.is_running(i):
                return ("error", otpy.NoProcess)
            if kind == "add":
                self.counts[i] += op[2]
            return ("ok", self.counts[i])
        if kind in ("inc", "crash", "stop_normal"):
            if self.is_running(i):
                if kind == "inc":
                    self.counts[i] += 1
                else:
                    self._exit(i, normal=kind == "stop_normal")
            return OK
        if not self.alive:
            return ("error", otpy.NoProcess)
        present = i in self.running
        if kind == "start":
            if present:
                return ("error", otpy.AlreadyStarted if self.running[i] else otpy.AlreadyPresent)
            if self._init_fails(i):
                return ("error", otpy.StartError)
            self.order.append(i)
            self._started(i)
            return OK
        if not present:
            return ("error", otpy.ChildNotFound)
        if kind == "terminate":
            if self.restart_types[i] == "temporary":
                self._remove(i)
            else:
                self.running[i] = False
            return OK
        if self.running[i]:
            return ("error", otpy.ChildRunning)
        if kind == "restart":
            if self._init_fails(i):
                return ("error", otpy.StartError)
            self._started(i)
        else:  # delete
            self._remove(i)
        return OK


# --- running a program ----------------------------------------------------------------------


async def run_op(sup: otpy.Pid, model: Model, inits: Inits, op: tuple[Any, ...]) -> Any:
    kind, arg = op[0], op[1]
    match kind:
        case "sleep":
            await trio.sleep(arg)
        case "break":
            inits.failing[arg] = inits.failing.get(arg, 0) + op[2]
        case "add":
            return await otpy.call(name(arg), ("add", op[2]))
        case "get":
            return await otpy.call(name(arg), "get")
        case "inc":
            otpy.cast(name(arg), "inc")
        case "crash" | "stop_normal":
            pid = otpy.whereis(name(arg))
            if pid is not None:
                otpy.cast(pid, kind)
                await pid.wait_exited()
                await trio.testing.wait_all_tasks_blocked()
        case "start":
            await otpy.Supervisor.start_child(sup, spec(arg, model.restart_types[arg], inits))
        case "terminate":
            await otpy.Supervisor.terminate_child(sup, name(arg))
        case "restart":
            await otpy.Supervisor.restart_child(sup, name(arg))
        case "delete":
            await otpy.Supervisor.delete_child(sup, name(arg))
    return None


async def check_structure(sup: otpy.Pid, model: Model) -> None:
    if not model.alive:
        assert not sup.alive
        assert sup.exit_reason == "shutdown"
        assert otpy.registered() == []
        return
    infos = await otpy.Supervisor.which_children(sup)
    actual = [(info.id, isinstance(info.child, otpy.Pid) and info.child.alive) for info in infos]
    expected = [(name(i), model.running[i]) for i in reversed(model.order)]
    assert actual == expected
    for info in infos:
        if info.child is not None:
            assert otpy.whereis(str(info.id)) is info.child
    counts = await otpy.Supervisor.count_children(sup)
    assert counts == otpy.ChildCounts(
        specs=len(model.order), active=sum(model.running.values()), supervisors=0, workers=len(model.order)
    )


async def run_program(strategy: str, restart_types: list[str], program: list[tuple[Any, ...]]) -> None:
    model = Model(restart_types, strategy)
    inits = Inits()
    async with trio.open_nursery() as nursery:
        children = [spec(i, restart, inits) for i, restart in enumerate(restart_types)]
        sup = await otpy.Supervisor.start_link(
            children, strategy=strategy, max_restarts=MAX_RESTARTS, max_seconds=MAX_SECONDS, nursery=nursery
        )
        for op in program:
            expected = model.apply(op)
            try:
                with structlog.testing.capture_logs():  # the crash reports are expected
                    value = await run_op(sup, model, inits, op)
            except otpy.OtpError as exc:
                actual: Outcome = ("error", type(exc))
            else:
                actual = ("ok", value)
            assert actual == expected, f"{op}: {actual} != {expected}"
            assert inits == model.inits, f"{op}: the children's starts differ from the model's"
            await check_structure(sup, model)
        assert trio.current_time() == model.now
        for i in model.order:
            if model.is_running(i):
                assert await otpy.call(name(i), "get") == model.counts[i]
        nursery.cancel_scope.cancel()


N_MAX = 4


STRATEGIES = ["one_for_one", "one_for_all", "rest_for_one"]
Program = tuple[str, list[str], list[tuple[Any, ...]]]


@st.composite
def programs(draw: st.DrawFn, strategy: str) -> Program:
    restart_types = draw(st.lists(st.sampled_from(["permanent", "transient", "temporary"]), min_size=1, max_size=N_MAX))
    index = st.integers(min_value=0, max_value=len(restart_types) - 1)
    op = st.one_of(
        st.tuples(st.just("add"), index, st.integers(min_value=-3, max_value=3)),
        st.tuples(st.sampled_from(["get", "inc", "stop_normal"]), index),
        st.tuples(st.just("crash"), index),  # a branch of its own: crashes and restarts are the point
        st.tuples(st.sampled_from(["terminate", "restart", "delete", "start"]), index),
        st.tuples(st.just("sleep"), st.sampled_from([0.5, 1.0, 3.0, 6.0])),
        st.tuples(st.just("break"), index, st.integers(min_value=1, max_value=MAX_RESTARTS + 1)),
    )
    return strategy, restart_types, draw(st.lists(op, min_size=3, max_size=30))


def run(case: Program) -> None:
    trio.run(run_program, *case, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(deadline=None, max_examples=75, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_supervisor_matches_the_model(strategy: str, data: st.DataObject) -> None:
    """Any program of calls, casts, crashes, failing starts, sleeps and management requests leaves the tree
    as the model of OTP's supervisor says."""
    run(data.draw(programs(strategy)))


@pytest.mark.parametrize(("pause", "alive"), [(5.5, False), (6.0, True)])
def test_model_window(pause: float, alive: bool) -> None:
    """The model keeps a restart while floor(now) - t <= max_seconds, so 5.5 s later it still counts."""
    model = Model(["permanent"])
    for _ in range(MAX_RESTARTS):
        model.apply(("crash", 0))
    assert model.alive
    model.apply(("sleep", pause))
    model.apply(("crash", 0))
    assert model.alive is alive


def test_known_program() -> None:
    """A fixed program exercising every operation runs against the model."""
    program: list[tuple[Any, ...]] = [
        ("add", 0, 2),
        ("inc", 1),
        ("crash", 1),
        ("get", 1),
        ("terminate", 0),
        ("restart", 1),
        ("start", 0),
        ("restart", 0),
        ("stop_normal", 1),
        ("delete", 1),
        ("start", 1),
        ("sleep", 6.0),
        ("crash", 0),
        ("crash", 0),
        ("crash", 0),
        ("crash", 0),
        ("get", 0),
    ]
    run(("one_for_one", ["permanent", "transient"], program))
