"""The entry point: otpy.serve and otpy.run, signals, ordered shutdown and exit statuses."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import otpy

ROOT = Path(__file__).resolve().parent.parent


class Recorder(otpy.GenServer):
    """Traps exits and records its start and its terminate in a shared list."""

    trap_exit = True

    async def init(self, label: str, log: list[str], stop_seconds: float = 0.0) -> None:
        self.label, self.log, self.stop_seconds = label, log, stop_seconds
        log.append(f"start {label}")

    async def terminate(self, reason: object) -> None:
        self.log.append(f"stop {self.label} {reason!r}")
        await trio.sleep(self.stop_seconds)


class Crasher(otpy.GenServer):
    """Crashes ``after`` seconds after it starts."""

    async def init(self, after: float) -> otpy.NoReply:
        return otpy.NoReply(timeout=after)

    async def handle_info(self, message: Any) -> None:
        raise RuntimeError("crash")


class Broken(otpy.GenServer):
    async def init(self) -> None:
        raise ValueError("no database")


def recorders(log: list[str], *labels: str, stop_seconds: float = 0.0) -> list[otpy.ChildSpec]:
    return [Recorder.child_spec(label, log, stop_seconds, id=label) for label in labels]


# --- serve, in process ---------------------------------------------------------------------


class TestServe:
    async def test_a_signal_stops_the_tree_in_reverse_order(self, nursery: trio.Nursery) -> None:
        """The first signal stops the children in reverse start order, and serve returns."""
        log: list[str] = []
        done = trio.Event()

        async def run(task_status: trio.TaskStatus[otpy.Pid]) -> None:
            await otpy.serve(recorders(log, "a", "b", "c"), signals=(signal.SIGUSR1,), task_status=task_status)
            done.set()

        top = await nursery.start(run)
        assert log == ["start a", "start b", "start c"]
        signal.raise_signal(signal.SIGUSR1)
        with trio.fail_after(5):
            await done.wait()
        assert log[3:] == ["stop c 'shutdown'", "stop b 'shutdown'", "stop a 'shutdown'"]
        assert top.exit_reason == "shutdown"

    async def test_task_status_gives_the_named_top_supervisor(self, nursery: trio.Nursery) -> None:
        """nursery.start(otpy.serve, ...) returns the top supervisor's pid, registered under name."""
        top: otpy.Pid = await nursery.start(
            lambda task_status: otpy.serve([], name="app", signals=(), task_status=task_status)
        )
        assert otpy.whereis("app") is top
        assert isinstance(await otpy.get_state(top), otpy.Supervisor)
        await otpy.stop(top)

    async def test_normal_stop_of_the_top_supervisor_returns(self, nursery: trio.Nursery) -> None:
        """otpy.stop(top) (reason "normal") ends serve without an error."""
        log: list[str] = []
        finished: list[str] = []

        async def run(task_status: trio.TaskStatus[otpy.Pid]) -> None:
            await otpy.serve(recorders(log, "a"), signals=(), task_status=task_status)
            finished.append("returned")

        top = await nursery.start(run)
        await otpy.stop(top)
        await trio.testing.wait_all_tasks_blocked()
        assert finished == ["returned"]
        assert log == ["start a", "stop a 'shutdown'"]

    async def test_giving_up_raises_application_exited(self, autojump_clock: trio.testing.MockClock) -> None:
        """A top supervisor that reaches its restart intensity makes serve raise ApplicationExited("shutdown")."""
        start = trio.current_time()
        with pytest.raises(otpy.ApplicationExited) as info:
            await otpy.serve([Crasher.child_spec(0.25)], max_restarts=3, max_seconds=5, signals=())
        assert info.value.reason == "shutdown"
        assert "maximum restart intensity" in str(info.value)
        assert trio.current_time() - start == 1.0  # the fourth crash in the window, at 4 x 0.25 s

    async def test_a_killed_top_supervisor_raises_application_exited(self, nursery: trio.Nursery) -> None:
        """A top supervisor killed by someone else is a failure: ApplicationExited("killed")."""

        async def run(task_status: trio.TaskStatus[otpy.Pid]) -> None:
            with pytest.raises(otpy.ApplicationExited) as info:
                await otpy.serve(recorders([], "a"), signals=(), task_status=task_status)
            assert info.value.reason == "killed"
            assert "maximum restart intensity" not in str(info.value)

        top = await nursery.start(run)
        otpy.exit(top, "kill")

    async def test_a_failed_start_raises_start_error(self) -> None:
        """A child that fails to start makes serve raise a plain StartError, not a group."""
        log: list[str] = []
        with pytest.raises(otpy.StartError) as info:
            await otpy.serve([*recorders(log, "a"), Broken.child_spec(id="db")], signals=())
        reason: Any = info.value.reason
        assert reason == ("shutdown", ("failed_to_start_child", "db", reason[1][2]))
        assert isinstance(reason[1][2], ValueError)
        assert log == ["start a", "stop a 'shutdown'"]

    async def test_cancelling_serve_stops_the_tree_in_order(self, autojump_clock: trio.testing.MockClock) -> None:
        """Cancelling serve stops the children in reverse order, each finishing its terminate."""
        log: list[str] = []
        with trio.move_on_after(1.0):
            await otpy.serve(recorders(log, "a", "b", stop_seconds=0.5), signals=())
        assert log == ["start a", "start b", "stop b 'shutdown'", "stop a 'shutdown'"]
        assert trio.current_time() == pytest.approx(2.0)

    async def test_a_signal_during_start_kills_the_half_started_tree(self, nursery: trio.Nursery) -> None:
        """A signal while a child's init hangs stops the start: serve returns, the started children exit."""
        log: list[str] = []
        done = trio.Event()

        class Hanging(otpy.GenServer):
            async def init(self) -> None:
                await trio.sleep(60)

        async def run() -> None:
            await otpy.serve([*recorders(log, "a"), Hanging.child_spec(id="hang")], signals=(signal.SIGUSR1,))
            done.set()

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["start a"]
        signal.raise_signal(signal.SIGUSR1)
        with trio.fail_after(5):
            await done.wait()
        assert log == ["start a", "stop a 'killed'"]

    async def test_stop_with_shutdown_is_a_clean_stop(self, nursery: trio.Nursery) -> None:
        """otpy.stop(top, "shutdown") is a deliberate stop too: serve returns without an error."""
        finished: list[str] = []

        async def run(task_status: trio.TaskStatus[otpy.Pid]) -> None:
            await otpy.serve(recorders([], "a"), signals=(), task_status=task_status)
            finished.append("returned")

        top = await nursery.start(run)
        await otpy.stop(top, "shutdown")
        await trio.testing.wait_all_tasks_blocked()
        assert finished == ["returned"]

    async def test_a_second_signal_kills_the_tree(self, nursery: trio.Nursery) -> None:
        """A second signal during a slow shutdown kills every process at once."""
        log: list[str] = []
        done = trio.Event()
        children = [
            Recorder.child_spec("slow", log, 60.0, id="slow", shutdown=math.inf),
            otpy.Supervisor.child_spec(recorders(log, "inner", stop_seconds=60.0), id="sub"),
        ]

        async def run(task_status: trio.TaskStatus[otpy.Pid]) -> None:
            await otpy.serve(children, signals=(signal.SIGUSR1,), task_status=task_status)
            done.set()

        top = await nursery.start(run)
        signal.raise_signal(signal.SIGUSR1)
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == "stop inner 'shutdown'"  # the sub-supervisor is stopping first
        signal.raise_signal(signal.SIGUSR1)
        with trio.fail_after(5):
            await done.wait()
        assert top.exit_reason == "killed"
        assert not [line for line in log if line.startswith("stop slow")]  # killed before its turn


# --- run, in a subprocess ---------------------------------------------------------------------

APP = textwrap.dedent(
    """
    import sys
    import otpy, trio

    class Worker(otpy.GenServer):
        trap_exit = True

        async def init(self, label, crash_after=None):
            self.label = label
            print(f"started {label}", flush=True)
            if crash_after is not None:
                return otpy.NoReply(timeout=crash_after)

        async def handle_info(self, message):
            raise RuntimeError(f"{self.label} crashed")

        async def terminate(self, reason):
            print(f"stopped {self.label} {reason!r}", flush=True)

    class Broken(otpy.GenServer):
        async def init(self):
            raise ValueError("no database")

    mode = sys.argv[1]
    if mode == "serve":
        children = [Worker.child_spec("a", id="a"), Worker.child_spec("b", id="b"), Worker.child_spec("c", id="c")]
        otpy.run(children, name="app")
    elif mode == "crash":
        otpy.run([Worker.child_spec("flaky", 0.05, id="flaky")], max_restarts=3, max_seconds=1, name="app")
    elif mode == "broken":
        otpy.run([Worker.child_spec("a", id="a"), Broken.child_spec(id="db")], name="app")
    print("run returned", flush=True)
    """
)


HANG_GUARD = 30.0  # seconds a program may take before a test calls it hung (it takes about 1 s)


@pytest.fixture
def spawn_app(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Starts the program above in one of its modes; whatever still runs at the end is killed."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    started: list[subprocess.Popen[str]] = []

    def spawn(mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _wait_for_line(proc: subprocess.Popen[str], wanted: str) -> list[str]:
    """The lines up to ``wanted``; a program that exits before printing it fails the test."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:  # a hung program is caught by the suite's timeout (pyproject.toml)
        lines.append(line.rstrip("\n"))
        if line.strip() == wanted:
            return lines
    raise AssertionError(f"never printed {wanted!r}; got {lines!r}")


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The program's output once it has exited; a hang guard, not a speed check."""
    try:
        return proc.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"hang guard: still running after {HANG_GUARD} s; printed {out!r} {err!r}") from None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_stops_in_order_on_a_signal_and_exits_0(
    spawn_app: Callable[[str], subprocess.Popen[str]], signum: signal.Signals
) -> None:
    """SIGTERM or SIGINT stops the tree in reverse start order, run returns, and the exit status is 0."""
    proc = spawn_app("serve")
    _wait_for_line(proc, "started c")
    proc.send_signal(signum)
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    stops = [line for line in out.splitlines() if line.startswith(("stopped", "run returned"))]
    assert stops == ["stopped c 'shutdown'", "stopped b 'shutdown'", "stopped a 'shutdown'", "run returned"]


def test_run_exits_1_when_the_top_supervisor_gives_up(spawn_app: Callable[[str], subprocess.Popen[str]]) -> None:
    """Children crashing beyond the restart intensity end run with exit status 1 and a message.

    When serve gives up is checked on virtual time (TestServe); how long the whole program
    takes is measured by bench/programs.py.
    """
    proc = spawn_app("crash")
    out, err = _finish(proc)
    assert proc.returncode == 1
    assert out.count("started flaky") == 4
    assert "run returned" not in out
    assert "otpy: the top supervisor 'app' exited without being asked to" in err
    assert "maximum restart intensity" in err


def test_run_exits_1_when_the_tree_fails_to_start(spawn_app: Callable[[str], subprocess.Popen[str]]) -> None:
    """A child that fails to start ends run with exit status 1; the children started are stopped."""
    proc = spawn_app("broken")
    out, err = _finish(proc)
    assert proc.returncode == 1
    assert "stopped a 'shutdown'" in out
    assert "run returned" not in out
    assert "otpy: process failed to start" in err
    assert "failed_to_start_child" in err


def test_public_names_claim_the_otpy_module() -> None:
    """run, serve and ApplicationExited are exported from otpy."""
    assert otpy.run.__module__ == "otpy"
    assert otpy.serve.__module__ == "otpy"
    assert issubclass(otpy.ApplicationExited, otpy.OtpError)
