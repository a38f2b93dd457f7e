"""Task and Task.Supervisor: async/await, yield, shutdown, links and monitors, async_stream."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import otpy

ROOT = Path(__file__).resolve().parent.parent


# --- functions the tasks run ------------------------------------------------------------


async def double(x: int) -> int:
    await trio.sleep(0.1)
    return 2 * x


async def boom(message: str = "boom") -> None:
    await trio.sleep(0.1)
    raise KeyError(message)


async def nap(seconds: float, value: Any = "rested") -> Any:
    await trio.sleep(seconds)
    return value


async def deaf_forever() -> None:
    """Trap exits, so the exit signal "shutdown" becomes an unread message."""
    otpy.trap_exit()
    await trio.sleep_forever()


# --- servers that own tasks ------------------------------------------------------------


class Owner(otpy.GenServer):
    """Runs whatever function a call names in a task, and reports what it sees."""

    async def init(self, trap: bool = False) -> None:
        if trap:
            otpy.trap_exit()
        self.infos: list[Any] = []
        self.task: otpy.Task[Any] | None = None

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("await", fn, args):
                return await otpy.Task.async_(fn, *args).await_()
            case ("await_catching", fn, args):
                try:
                    return await otpy.Task.async_(fn, *args).await_()
                except otpy.TaskExited as exc:
                    return ("task_exited", exc.reason)
            case ("spawn", fn, args):
                self.task = otpy.Task.async_(fn, *args)
                return self.task
            case ("nolink", sup, fn, args):
                task = await otpy.TaskSupervisor.async_nolink(sup, fn, *args)
                return await task.yield_(1.0)
            case ("nolink_spawn", sup, fn, args):
                self.task = await otpy.TaskSupervisor.async_nolink(sup, fn, *args)
                return self.task
            case ("linked", sup, fn, args):
                return await (await otpy.TaskSupervisor.async_(sup, fn, *args)).await_()
            case "infos":
                return self.infos
            case "crash":
                raise RuntimeError("owner crashed")

    async def handle_info(self, message: Any) -> None:
        self.infos.append(message)


# --- Task.async_ and await_ ------------------------------------------------------------


class TestAwait:
    async def test_await_returns_the_result(self, nursery: trio.Nursery) -> None:
        """await_ returns what the function returned."""
        task = otpy.Task.async_(double, 21, nursery=nursery)
        assert await otpy.Task.await_(task) == 42
        assert task.pid.exit_reason == "normal"

    async def test_tasks_run_concurrently(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """Two one-second tasks finish together after one second."""
        start = trio.current_time()
        a = otpy.Task.async_(nap, 1.0, "a", nursery=nursery)
        b = otpy.Task.async_(nap, 1.0, "b", nursery=nursery)
        assert (await a.await_(), await b.await_()) == ("a", "b")
        assert trio.current_time() - start == 1.0

    async def test_timeout_raises_task_timeout_and_the_task_keeps_running(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """await_ raises TaskTimeout after the timeout; the task is still alive afterwards."""
        start = trio.current_time()
        task = otpy.Task.async_(nap, 10.0, nursery=nursery)
        with pytest.raises(otpy.TaskTimeout) as info:
            await task.await_(timeout=2.0)
        assert trio.current_time() - start == 2.0
        assert isinstance(info.value, trio.TooSlowError)
        assert info.value.timeout == 2.0
        assert task.pid.alive
        assert await task.await_(timeout=10.0) == "rested"

    async def test_crash_raises_task_exited_with_the_reason(self, nursery: trio.Nursery) -> None:
        """Outside a process, a crashed task makes await_ raise TaskExited carrying the exception."""
        task = otpy.Task.async_(boom, "lost", nursery=nursery)
        with pytest.raises(otpy.TaskExited) as info:
            await task.await_()
        assert isinstance(info.value.reason, KeyError)
        assert info.value.__cause__ is info.value.reason
        assert "KeyError" in str(info.value)

    async def test_process_exit_without_reply_raises_task_exited(self, nursery: trio.Nursery) -> None:
        """A task that exits through ProcessExit never replies: await_ raises with that reason."""

        async def leave() -> None:
            raise otpy.ProcessExit(("shutdown", "done"))

        task = otpy.Task.async_(leave, nursery=nursery)
        with pytest.raises(otpy.TaskExited) as info:
            await task.await_()
        assert info.value.reason == ("shutdown", "done")

    async def test_outside_a_process_needs_a_nursery(self) -> None:
        """Task.async_ outside any process without nursery= raises RuntimeError."""
        with pytest.raises(RuntimeError, match="nursery="):
            otpy.Task.async_(double, 1)

    async def test_await_by_another_process_is_refused(self, nursery: trio.Nursery) -> None:
        """Only the owner may await a task, as in Elixir."""
        owner = await Owner.start_link(nursery=nursery)
        task = await otpy.call(owner, ("spawn", nap, (0.1,)))
        assert task.owner is owner
        with pytest.raises(RuntimeError, match="owner"):
            await task.await_()

    async def test_task_is_a_process(self, nursery: trio.Nursery) -> None:
        """Inside a task, otpy.self() is the task's pid, whose parent is the owner."""

        async def whoami() -> tuple[otpy.Pid, otpy.Pid | None]:
            me = otpy.self()
            await trio.lowlevel.checkpoint()
            return me, me.parent

        owner = await Owner.start_link(nursery=nursery)
        me, parent = await otpy.call(owner, ("await", whoami, ()))
        assert parent is owner
        assert repr(me).startswith("<Pid Task#")


class TestLinks:
    async def test_linked_crash_stops_the_owner_with_the_task_reason(self, nursery: trio.Nursery) -> None:
        """A GenServer that does not trap exits dies with the task's own exception, as in Elixir."""
        owner = await Owner.start_link(nursery=nursery)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(owner, ("await_catching", boom, ()))
        assert isinstance(info.value.reason, KeyError)
        assert owner.exit_reason is info.value.reason

    async def test_trapping_owner_gets_task_exited_then_the_exit_signal(self, nursery: trio.Nursery) -> None:
        """An owner that traps exits survives: await_ raises TaskExited, and an ExitSignal arrives later."""
        owner = await Owner.start_link(True, nursery=nursery)
        kind, reason = await otpy.call(owner, ("await_catching", boom, ()))
        assert kind == "task_exited"
        assert isinstance(reason, KeyError)
        infos = await otpy.call(owner, "infos")
        assert [type(m) for m in infos] == [otpy.ExitSignal]
        assert infos[0].reason is reason

    async def test_owner_crash_stops_the_task(self, nursery: trio.Nursery) -> None:
        """When the owner crashes, the linked task gets the exit signal and stops with the same reason."""
        owner = await Owner.start(nursery=nursery)
        task = await otpy.call(owner, ("spawn", nap, (100.0,)))
        with pytest.raises(otpy.ServerExited):
            await otpy.call(owner, "crash")
        reason = await task.pid.wait_exited()
        assert isinstance(reason, RuntimeError)
        assert reason is owner.exit_reason

    async def test_owner_gets_task_reply_then_down(self, nursery: trio.Nursery) -> None:
        """An owner that does not await receives TaskReply and then Down, both tagged with task.ref."""
        owner = await Owner.start_link(nursery=nursery)
        task = await otpy.call(owner, ("spawn", double, (5,)))
        await task.pid.wait_exited()
        infos = await otpy.call(owner, "infos")
        assert infos == [otpy.TaskReply(task.ref, 10), otpy.Down(task.ref, task.pid, "normal")]

    async def test_await_removes_reply_and_down_from_the_mailbox(self, nursery: trio.Nursery) -> None:
        """After await_ in a GenServer, handle_info never sees the task's TaskReply or Down."""
        owner = await Owner.start_link(nursery=nursery)
        assert await otpy.call(owner, ("await", double, (4,))) == 8
        assert await otpy.call(owner, "infos") == []


# --- yield_, yield_many, shutdown -----------------------------------------------------------


class TestYieldAndShutdown:
    async def test_yield_returns_none_while_running_then_ok(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """yield_ returns None after its timeout while the task runs, then TaskOk once it replied."""
        task = otpy.Task.async_(nap, 2.0, "v", nursery=nursery)
        assert await task.yield_(1.0) is None
        assert await task.yield_(5.0) == otpy.TaskOk("v")

    async def test_yield_returns_exit_for_a_crash(self, nursery: trio.Nursery) -> None:
        """yield_ returns TaskExit with the exception when the task crashed."""
        task = otpy.Task.async_(boom, nursery=nursery)
        result = await task.yield_(1.0)
        assert isinstance(result, otpy.TaskExit)
        assert isinstance(result.reason, KeyError)

    async def test_yield_many_gives_one_result_per_task(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """yield_many waits up to the timeout and returns ok, exit or None for each task, in order."""
        start = trio.current_time()
        tasks = [
            otpy.Task.async_(nap, 0.5, "fast", nursery=nursery),
            otpy.Task.async_(boom, nursery=nursery),
            otpy.Task.async_(nap, 9.0, nursery=nursery),
        ]
        fast, crashed, slow = await otpy.Task.yield_many(tasks, 1.0)
        assert trio.current_time() - start == 1.0
        assert fast == otpy.TaskOk("fast")
        assert isinstance(crashed, otpy.TaskExit)
        assert isinstance(crashed.reason, KeyError)
        assert slow is None

    async def test_shutdown_of_a_running_task_returns_none(self, nursery: trio.Nursery) -> None:
        """Shutting down a running task stops it with reason "shutdown" and returns None."""
        task = otpy.Task.async_(nap, 100.0, nursery=nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert await task.shutdown() is None
        assert task.pid.exit_reason == "shutdown"

    async def test_shutdown_after_the_reply_returns_ok(self, nursery: trio.Nursery) -> None:
        """A task that has already replied gives its result to shutdown."""
        task = otpy.Task.async_(double, 3, nursery=nursery)
        await task.pid.wait_exited()
        assert await task.shutdown() == otpy.TaskOk(6)

    async def test_shutdown_after_a_crash_returns_exit(self, nursery: trio.Nursery) -> None:
        """A task that crashed before the shutdown gives TaskExit with its reason."""
        task = otpy.Task.async_(boom, nursery=nursery)
        await task.pid.wait_exited()
        result = await task.shutdown()
        assert isinstance(result, otpy.TaskExit)
        assert isinstance(result.reason, KeyError)

    async def test_shutdown_kills_after_the_timeout(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A task that ignores "shutdown" is killed after the timeout: TaskExit("killed")."""
        task = otpy.Task.async_(deaf_forever, nursery=nursery)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        assert await task.shutdown(timeout=3.0) == otpy.TaskExit("killed")
        assert trio.current_time() - start == 3.0

    async def test_shutdown_brutal_kill_returns_none(self, nursery: trio.Nursery) -> None:
        """brutal_kill kills at once, and a task killed that way gives None."""
        task = otpy.Task.async_(deaf_forever, nursery=nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert await task.shutdown(timeout="brutal_kill") is None
        assert task.pid.exit_reason == "killed"

    async def test_shutdown_in_a_process_unlinks_first(self, nursery: trio.Nursery) -> None:
        """A process that shuts down its own task is not hit by the task's exit."""

        class Stopper(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                task = otpy.Task.async_(nap, 100.0)
                await trio.sleep(0.01)
                return await task.shutdown(timeout="brutal_kill")

        pid = await Stopper.start_link(nursery=nursery)
        assert await otpy.call(pid, "go") is None
        assert pid.alive


# --- supervised tasks -------------------------------------------------------------------


class TestTaskSupervisor:
    async def test_task_supervisor_is_also_task_supervisor_attribute(self) -> None:
        """otpy.Task.Supervisor is otpy.TaskSupervisor, spelled as in Elixir."""
        assert otpy.Task.Supervisor is otpy.TaskSupervisor
        assert issubclass(otpy.TaskSupervisor, otpy.DynamicSupervisor)

    async def test_start_child_runs_a_temporary_child(self, nursery: trio.Nursery) -> None:
        """start_child runs the function as a child of the supervisor; when it ends, it is forgotten."""
        ran: list[otpy.Pid | None] = []

        async def job() -> None:
            ran.append(otpy.self().parent)
            await trio.sleep(0.1)

        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        pid = await otpy.TaskSupervisor.start_child(sup, job)
        assert await otpy.TaskSupervisor.children(sup) == [pid]
        await pid.wait_exited()
        assert ran == [sup]
        assert await otpy.TaskSupervisor.children(sup) == []

    async def test_a_crashing_child_affects_nobody(self, nursery: trio.Nursery) -> None:
        """A crash under start_child is not restarted and leaves the supervisor running."""
        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        pid = await otpy.TaskSupervisor.start_child(sup, boom)
        assert isinstance(await pid.wait_exited(), KeyError)
        assert sup.alive
        assert await otpy.TaskSupervisor.children(sup) == []

    async def test_transient_child_is_restarted_after_a_crash(self, nursery: trio.Nursery) -> None:
        """restart="transient" runs the function again after a crash, and not after a normal end."""
        runs: list[otpy.Pid] = []
        third = trio.Event()

        async def flaky() -> None:
            runs.append(otpy.self())
            await trio.sleep(0.01)
            if len(runs) < 3:
                raise ValueError("not yet")
            third.set()

        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        await otpy.TaskSupervisor.start_child(sup, flaky, restart="transient")
        with trio.fail_after(5):
            await third.wait()
        assert await runs[2].wait_exited() == "normal"
        await otpy.get_state(sup)  # the supervisor has handled the exit
        assert len(runs) == 3
        assert [type(pid.exit_reason) for pid in runs[:2]] == [ValueError, ValueError]
        assert await otpy.TaskSupervisor.children(sup) == []

    async def test_async_nolink_crash_does_not_reach_the_caller(self, nursery: trio.Nursery) -> None:
        """A non-trapping GenServer survives a crashing async_nolink task and sees TaskExit."""
        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        owner = await Owner.start_link(nursery=nursery)
        result = await otpy.call(owner, ("nolink", sup, boom, ()))
        assert isinstance(result, otpy.TaskExit)
        assert isinstance(result.reason, KeyError)
        assert owner.alive

    async def test_async_nolink_await_raises_task_exited(self, nursery: trio.Nursery) -> None:
        """Outside a process, awaiting a crashed async_nolink task raises TaskExited."""
        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        task = await otpy.TaskSupervisor.async_nolink(sup, boom)
        assert task.pid.parent is sup
        with pytest.raises(otpy.TaskExited):
            await task.await_()

    async def test_async_nolink_result_reaches_handle_info(self, nursery: trio.Nursery) -> None:
        """A GenServer that does not await gets TaskReply and Down from an async_nolink task."""
        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        owner = await Owner.start_link(nursery=nursery)
        task = await otpy.call(owner, ("nolink_spawn", sup, double, (1,)))
        await task.pid.wait_exited()
        assert await otpy.call(owner, "infos") == [otpy.TaskReply(task.ref, 2), otpy.Down(task.ref, task.pid, "normal")]

    async def test_supervised_async_links_the_caller(self, nursery: trio.Nursery) -> None:
        """TaskSupervisor.async_ links the task to the caller: its crash stops a non-trapping caller."""
        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        owner = await Owner.start_link(nursery=nursery)
        assert await otpy.call(owner, ("linked", sup, double, (2,))) == 4
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(owner, ("linked", sup, boom, ()))
        assert isinstance(info.value.reason, KeyError)

    async def test_cancelled_async_nolink_never_runs_the_function(self, nursery: trio.Nursery) -> None:
        """If the caller is cancelled while the supervisor starts the task, the function does not run."""
        ran: list[str] = []

        async def job() -> None:
            ran.append("ran")

        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        with trio.CancelScope() as scope:
            scope.cancel()
            await otpy.TaskSupervisor.async_nolink(sup, job)
        await otpy.get_state(sup)  # the supervisor has handled the start request
        await trio.testing.wait_all_tasks_blocked()
        assert ran == []
        assert await otpy.TaskSupervisor.children(sup) == []

    async def test_stopping_the_supervisor_shuts_its_tasks_down(self, nursery: trio.Nursery) -> None:
        """Stopping a TaskSupervisor sends its running tasks the exit signal "shutdown"."""
        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)
        pids = [await otpy.TaskSupervisor.start_child(sup, nap, 100.0) for _ in range(3)]
        await otpy.stop(sup)
        assert [pid.exit_reason for pid in pids] == ["shutdown"] * 3

    async def test_task_child_spec_under_a_supervisor(self, nursery: trio.Nursery) -> None:
        """Task.child_spec runs a function as a supervised child; a permanent one is run again after a crash."""
        runs: list[otpy.Pid] = []
        second = trio.Event()

        async def loop() -> None:
            runs.append(otpy.self())
            await trio.sleep(0.01)
            if len(runs) == 1:
                raise ValueError("first run fails")
            second.set()
            await trio.sleep_forever()

        spec = otpy.Task.child_spec(loop, restart="permanent")
        assert str(spec.id).endswith("loop")
        sup = await otpy.Supervisor.start_link([spec], nursery=nursery)
        with trio.fail_after(5):
            await second.wait()
        [info] = await otpy.Supervisor.which_children(sup)
        assert info.child is runs[1]
        await otpy.stop(sup)
        assert runs[1].exit_reason == "shutdown"


# --- async_stream -------------------------------------------------------------------------


async def collect(stream: otpy.TaskStream[Any]) -> list[Any]:
    async with stream as results:
        return [result async for result in results]


class TestAsyncStream:
    async def test_ordered_results_follow_the_input(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Ordered results come in input order even when later items finish first."""
        start = trio.current_time()
        stream = otpy.Task.async_stream([3.0, 1.0, 2.0], lambda s: nap(s, s), max_concurrency=3, nursery=nursery)
        assert await collect(stream) == [otpy.TaskOk(3.0), otpy.TaskOk(1.0), otpy.TaskOk(2.0)]
        assert trio.current_time() - start == 3.0

    async def test_unordered_results_come_as_they_finish(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With ordered=False the results come in completion order."""
        stream = otpy.Task.async_stream(
            [3.0, 1.0, 2.0], lambda s: nap(s, s), max_concurrency=3, ordered=False, nursery=nursery
        )
        assert await collect(stream) == [otpy.TaskOk(1.0), otpy.TaskOk(2.0), otpy.TaskOk(3.0)]

    async def test_concurrency_is_bounded(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """No more than max_concurrency tasks run at once, and all items are processed."""
        running = most = 0

        async def work(n: int) -> int:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await trio.sleep(1.0)
            running -= 1
            return n

        start = trio.current_time()
        results = await collect(otpy.Task.async_stream(range(10), work, max_concurrency=3, nursery=nursery))
        assert results == [otpy.TaskOk(n) for n in range(10)]
        assert most == 3
        assert trio.current_time() - start == 4.0

    async def test_a_crash_is_reported_for_its_own_item(self, nursery: trio.Nursery) -> None:
        """One crashing item yields TaskExit with its exception; the other items still succeed."""

        async def work(n: int) -> int:
            await trio.lowlevel.checkpoint()
            if n == 2:
                raise KeyError(n)
            return n * 10

        results = await collect(otpy.Task.async_stream(range(4), work, max_concurrency=2, nursery=nursery))
        assert results[:2] == [otpy.TaskOk(0), otpy.TaskOk(10)]
        assert isinstance(results[2], otpy.TaskExit)
        assert isinstance(results[2].reason, KeyError)
        assert results[3] == otpy.TaskOk(30)

    async def test_a_timeout_kills_only_that_task(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An item that runs past the timeout is killed and yields TaskExit("timeout")."""
        pids: dict[float, otpy.Pid] = {}

        async def work(seconds: float) -> float:
            pids[seconds] = otpy.self()
            await trio.sleep(seconds)
            return seconds

        start = trio.current_time()
        stream = otpy.Task.async_stream([0.5, 9.0, 1.0], work, max_concurrency=3, timeout=2.0, nursery=nursery)
        assert await collect(stream) == [otpy.TaskOk(0.5), otpy.TaskExit("timeout"), otpy.TaskOk(1.0)]
        assert trio.current_time() - start == 2.0
        assert await pids[9.0].wait_exited() == "killed"

    async def test_on_timeout_exit_raises_and_kills_every_task(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """on_timeout="exit" raises TaskTimeout from the iterator and kills the tasks still running."""
        pids: list[otpy.Pid] = []

        async def work(seconds: float) -> float:
            pids.append(otpy.self())
            await trio.sleep(seconds)
            return seconds

        stream = otpy.Task.async_stream([9.0, 8.0], work, timeout=1.0, on_timeout="exit", nursery=nursery)
        with pytest.raises(otpy.TaskTimeout):
            await collect(stream)
        assert [await pid.wait_exited() for pid in pids] == ["killed", "killed"]

    async def test_leaving_early_kills_the_running_tasks(self, nursery: trio.Nursery) -> None:
        """Breaking out of an async with block kills the tasks that are still running."""
        pids: dict[float, otpy.Pid] = {}

        async def work(seconds: float) -> float:
            pids[seconds] = otpy.self()
            await trio.sleep(seconds)
            return seconds

        async with otpy.Task.async_stream([0.01, 100.0, 200.0], work, max_concurrency=3, nursery=nursery) as stream:
            async for result in stream:
                assert result == otpy.TaskOk(0.01)
                break
        assert [pids[s].exit_reason for s in (0.01, 100.0, 200.0)] == ["normal", "killed", "killed"]
        with pytest.raises(StopAsyncIteration):
            await anext(stream)

    async def test_async_iterable_input(self, nursery: trio.Nursery) -> None:
        """Items may come from an async iterable."""

        async def numbers() -> AsyncIterator[int]:
            for n in range(3):
                await trio.lowlevel.checkpoint()
                yield n

        assert await collect(otpy.Task.async_stream(numbers(), double, nursery=nursery)) == [
            otpy.TaskOk(0),
            otpy.TaskOk(2),
            otpy.TaskOk(4),
        ]

    async def test_nothing_starts_before_iteration(self, nursery: trio.Nursery) -> None:
        """The stream is lazy: no task starts until the first result is asked for."""
        started: list[int] = []

        async def work(n: int) -> int:
            started.append(n)
            return n

        stream = otpy.Task.async_stream(range(3), work, nursery=nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert started == []
        assert await anext(stream) == otpy.TaskOk(0)
        await stream.aclose()

    async def test_owner_exit_kills_the_stream_tasks(self, nursery: trio.Nursery) -> None:
        """When the process consuming a stream exits, its stream's tasks are killed."""
        pids: dict[float, otpy.Pid] = {}

        async def work(seconds: float) -> float:
            pids[seconds] = otpy.self()
            await trio.sleep(seconds)
            return seconds

        class Consumer(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                stream = otpy.Task.async_stream([0.01, 100.0, 200.0], work, max_concurrency=3)
                first = await anext(stream)
                raise RuntimeError(f"crash after {first}")

        consumer = await Consumer.start(nursery=nursery)
        with pytest.raises(otpy.ServerExited):
            await otpy.call(consumer, "go")
        with trio.fail_after(1):
            assert [await pids[s].wait_exited() for s in (100.0, 200.0)] == ["killed", "killed"]

    async def test_stream_tasks_are_not_linked_to_the_consumer(self, nursery: trio.Nursery) -> None:
        """A crash inside a stream does not stop the GenServer that consumes it."""

        class Consumer(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                async with otpy.Task.async_stream([1, 2], lambda _: boom()) as results:
                    return [type(r).__name__ async for r in results]

        consumer = await Consumer.start_link(nursery=nursery)
        assert await otpy.call(consumer, "go") == ["TaskExit", "TaskExit"]
        assert consumer.alive

    async def test_async_stream_nolink_runs_under_the_supervisor(self, nursery: trio.Nursery) -> None:
        """TaskSupervisor.async_stream_nolink starts each task as a child of the supervisor."""
        sup = await otpy.TaskSupervisor.start_link(nursery=nursery)

        async def parent(_: int) -> otpy.Pid | None:
            await trio.lowlevel.checkpoint()
            return otpy.self().parent

        results = await collect(otpy.TaskSupervisor.async_stream_nolink(sup, range(3), parent, max_concurrency=2))
        assert results == [otpy.TaskOk(sup)] * 3

    @pytest.mark.parametrize(("option", "value"), [("max_concurrency", 0), ("timeout", 0), ("on_timeout", "ignore")])
    async def test_bad_options_are_rejected(self, nursery: trio.Nursery, option: str, value: Any) -> None:
        """Invalid max_concurrency, timeout or on_timeout raise ValueError at once."""
        with pytest.raises(ValueError, match=option):
            otpy.Task.async_stream([1], double, nursery=nursery, **{option: value})


# --- names and examples -----------------------------------------------------------------------


def test_public_names_claim_the_otpy_module() -> None:
    """The Task names are exported from otpy and say so in their __module__."""
    for name in ("Task", "TaskSupervisor", "TaskOk", "TaskExit", "TaskReply", "TaskStream", "TaskTimeout"):
        assert getattr(otpy, name).__module__ == "otpy"
    assert issubclass(otpy.TaskExited, otpy.OtpError)
    assert issubclass(otpy.TaskTimeout, otpy.OtpError)


def test_task_stream_example_runs() -> None:
    """examples/task_stream.py exits 0 and reports the crash and the timeout for their own items."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "task_stream.py")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "item 3: exit  ConnectionError('page 3: connection reset')" in out
    assert "item 7: exit  'timeout'" in out
    assert "item 9: ok    page 9 (5120 bytes)" in out
    assert "at most 3 downloads ran at once" in out
    assert out.rstrip().endswith("done")
