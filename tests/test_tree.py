"""otpy.tree: snapshots of a supervision tree, their statuses and counts, and the text view."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import otpy
from otpy._tree import _child_node

ROOT = Path(__file__).resolve().parent.parent


class Worker(otpy.GenServer):
    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case "crash":
                raise RuntimeError("asked to crash")
            case ("sleep", seconds):
                await trio.sleep(seconds)
        return request

    async def handle_cast(self, request: Any) -> None:
        return None


BROKEN: list[bool] = []


class Fragile(otpy.GenServer):
    """Fails to start while BROKEN is set."""

    async def init(self) -> None:
        if BROKEN:
            raise ConnectionError("still broken")


async def start_app(nursery: trio.Nursery) -> otpy.Pid:
    """app (one_for_one): a, storage (rest_for_one: db, cache), jobs (TaskSupervisor)."""
    storage = otpy.Supervisor.child_spec(
        [Worker.child_spec(name="db"), Worker.child_spec(name="cache")],
        id="storage",
        name="storage",
        strategy="rest_for_one",
    )
    children = [Worker.child_spec(name="a"), storage, otpy.TaskSupervisor.child_spec(name="jobs")]
    return await otpy.Supervisor.start_link(children, name="app", max_restarts=100, nursery=nursery)


async def crash(name: str) -> None:
    pid = otpy.whereis(name)
    assert pid is not None
    with pytest.raises(otpy.ServerExited):
        await otpy.call(pid, "crash")


class TestSnapshot:
    async def test_every_process_appears_with_its_kind(self, nursery: trio.Nursery) -> None:
        """The snapshot lists every process in start order with id, name, kind and status."""
        app = await start_app(nursery)
        snapshot = otpy.tree(app)
        rows = [(n.id, n.name, n.kind, n.status, n.label) for n in snapshot.walk()]
        assert rows == [
            (None, "app", "supervisor", "running", "Supervisor"),
            ("a", "a", "worker", "running", "Worker"),
            ("storage", "storage", "supervisor", "running", "Supervisor"),
            ("db", "db", "worker", "running", "Worker"),
            ("cache", "cache", "worker", "running", "Worker"),
            ("jobs", "jobs", "dynamic", "running", "TaskSupervisor"),
        ]
        assert snapshot.strategy == "one_for_one"
        assert snapshot.find("storage").strategy == "rest_for_one"  # type: ignore[union-attr]
        assert snapshot.find("a").restart == "permanent"  # type: ignore[union-attr]

    async def test_root_by_name_and_unknown_root(self, nursery: trio.Nursery) -> None:
        """tree accepts a registered name; a name nobody holds raises NoProcess."""
        app = await start_app(nursery)
        assert otpy.tree("app").pid is app
        with pytest.raises(otpy.NoProcess):
            otpy.tree("nobody")

    async def test_a_worker_root_is_one_node(self, nursery: trio.Nursery) -> None:
        """tree of a worker is a single node with no children."""
        pid = await Worker.start_link(nursery=nursery)
        node = otpy.tree(pid)
        assert (node.kind, node.status, node.children, node.restart) == ("worker", "running", (), None)

    async def test_snapshot_is_a_frozen_value(self, nursery: trio.Nursery) -> None:
        """Snapshot nodes are frozen attrs values: they cannot be changed after the fact."""
        node = otpy.tree(await start_app(nursery))
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            node.status = "not running"  # type: ignore[misc]

    async def test_mailbox_length(self, nursery: trio.Nursery) -> None:
        """mailbox counts the messages waiting while the process is busy."""
        await start_app(nursery)
        a = otpy.whereis("a")
        assert a is not None
        nursery.start_soon(otpy.call, a, ("sleep", 10.0))
        await trio.testing.wait_all_tasks_blocked()
        otpy.cast(a, 1)
        otpy.cast(a, 2)
        assert otpy.tree("app").find("a").mailbox == 2  # type: ignore[union-attr]

    async def test_uptime_counts_from_the_current_process(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """uptime is the age of the current process: it starts again after a restart."""
        await start_app(nursery)
        await trio.sleep(2.0)
        assert otpy.tree("app").find("a").uptime == 2.0  # type: ignore[union-attr]
        await crash("a")
        await trio.sleep(0.5)
        node = otpy.tree("app").find("a")
        assert node is not None
        assert node.uptime == 0.5
        assert otpy.tree("app").uptime == 2.5

    async def test_dynamic_children_have_no_id(self, nursery: trio.Nursery) -> None:
        """The tasks of a TaskSupervisor are listed under it by pid, labelled with their function."""
        await start_app(nursery)

        async def fetch() -> None:
            await trio.sleep_forever()

        pid = await otpy.TaskSupervisor.start_child("jobs", fetch)
        [node] = otpy.tree("app").find("jobs").children  # type: ignore[union-attr]
        assert (node.id, node.pid, node.kind, node.restart) == (None, pid, "worker", "temporary")
        assert node.label == f"Task {fetch.__qualname__}"


class TestStatusAndRestarts:
    async def test_restart_count_grows_with_each_restart(self, nursery: trio.Nursery) -> None:
        """Each restart seen between snapshots adds one; a rest_for_one restart counts for both children."""
        await start_app(nursery)
        assert otpy.tree("app").find("db").restarts == 0  # type: ignore[union-attr]
        await crash("db")
        await otpy.get_state("storage")
        snapshot = otpy.tree("app")
        assert [(n.id, n.restarts) for n in snapshot.find("storage").children] == [("db", 1), ("cache", 1)]  # type: ignore[union-attr]
        await crash("db")
        await otpy.get_state("storage")
        assert otpy.tree("app").find("db").restarts == 2  # type: ignore[union-attr]
        assert otpy.tree("app").find("a").restarts == 0  # type: ignore[union-attr]

    async def test_a_child_between_failed_restarts_is_restarting(self, nursery: trio.Nursery) -> None:
        """While its restarts fail, a child shows "restarting" with no pid; then "running" again."""
        spec = Fragile.child_spec(name="fragile")
        sup = await otpy.Supervisor.start_link([spec], max_restarts=10**6, nursery=nursery)
        otpy.tree(sup)
        BROKEN.append(True)
        try:
            otpy.exit(otpy.whereis("fragile"), "kill")  # type: ignore[arg-type]
            node: otpy.TreeNode | None = None
            for _ in range(100):
                await trio.lowlevel.checkpoint()
                node = otpy.tree(sup).find("fragile")
                assert node is not None
                if node.status == "restarting" and node.pid is None:
                    break
            assert node is not None
            assert (node.status, node.pid, node.uptime, node.mailbox) == ("restarting", None, None, 0)
        finally:
            BROKEN.clear()
        with trio.fail_after(5):
            while otpy.whereis("fragile") is None:
                await trio.lowlevel.checkpoint()
        node = otpy.tree(sup).find("fragile")
        assert node is not None
        assert (node.status, node.restarts) == ("running", 1)

    async def test_a_terminated_child_is_not_running(self, nursery: trio.Nursery) -> None:
        """A child stopped with terminate_child keeps its spec and shows "not running"."""
        app = await start_app(nursery)
        await otpy.Supervisor.terminate_child(app, "a")
        node = otpy.tree(app).find("a")
        assert node is not None
        assert (node.status, node.pid, node.uptime, node.label, node.kind) == (
            "not running",
            None,
            None,
            "Worker",
            "worker",
        )

    async def test_exact_counts_win_when_the_record_carries_them(self, nursery: trio.Nursery) -> None:
        """A child record with an int restarts attribute is shown with that exact count."""
        pid = await Worker.start_link(nursery=nursery)

        @attrs.define(eq=False)
        class Record:
            spec: otpy.ChildSpec
            restarts: int

        record = Record(Worker.child_spec(id="w"), 7)
        node = _child_node(record, record.spec, "w", pid, False, trio.current_time())
        assert (node.restarts, node.status) == (7, "running")


class TestExactRestartCounts:
    async def test_restarts_between_snapshots_all_count(self, nursery: trio.Nursery) -> None:
        """Two restarts between two snapshots count as two."""
        await start_app(nursery)
        otpy.tree("app")
        for _ in range(2):
            await crash("a")
            await otpy.get_state("app")
        assert otpy.tree("app").find("a").restarts == 2  # type: ignore[union-attr]

    async def test_dynamic_children_restarts_are_counted(self, nursery: trio.Nursery) -> None:
        """A DynamicSupervisor child restarted twice, with no snapshot in between, shows restarts 2."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        pid = await otpy.DynamicSupervisor.start_child(sup, Worker.child_spec())
        for _ in range(2):
            with pytest.raises(otpy.ServerExited):
                await otpy.call(pid, "crash")  # type: ignore[arg-type]
            await otpy.get_state(sup)
            [info] = await otpy.DynamicSupervisor.which_children(sup)
            pid = info.child  # type: ignore[assignment]
        [node] = otpy.tree(sup).children
        assert node.restarts == 2


class TestRender:
    async def test_render_draws_an_aligned_tree(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """str(snapshot) draws one aligned line per process, with tree branches."""
        app = await start_app(nursery)
        await trio.sleep(1.5)
        for _ in range(2):
            otpy.tree(app)  # snapshots between restarts see every restart
            await crash("a")
            await otpy.get_state(app)
        text = str(otpy.tree(app))
        assert text == "\n".join(
            [
                "app            supervisor  Supervisor one_for_one   running  up 1.5s  restarts 0  mailbox 0",
                "├── a          worker      Worker                   running  up 0.0s  restarts 2  mailbox 0",
                "├── storage    supervisor  Supervisor rest_for_one  running  up 1.5s  restarts 0  mailbox 0",
                "│   ├── db     worker      Worker                   running  up 1.5s  restarts 0  mailbox 0",
                "│   └── cache  worker      Worker                   running  up 1.5s  restarts 0  mailbox 0",
                "└── jobs       dynamic     TaskSupervisor           running  up 1.5s  restarts 0  mailbox 0",
            ]
        )

    async def test_long_uptimes_use_minutes_and_hours(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Uptimes render as seconds, then minutes, then hours."""
        pid = await Worker.start_link(nursery=nursery)
        await trio.sleep(125)
        assert "up 2m05s" in otpy.tree(pid).render()
        await trio.sleep(3600)
        assert "up 1h02m" in otpy.tree(pid).render()


class Gauge(otpy.GenServer):
    """A worker with its own status line."""

    async def init(self) -> None:
        self.level = 0

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        self.level = request
        return request

    def tree_status(self) -> str:
        if self.level < 0:
            raise ValueError("negative level")
        return f"level {self.level}"


class TestTreeStatus:
    async def test_a_server_adds_its_own_status_line(self, nursery: trio.Nursery) -> None:
        """A server's tree_status() becomes its node's info, drawn at the end of its line."""
        children = [Gauge.child_spec(name="gauge"), Worker.child_spec(name="plain")]
        sup = await otpy.Supervisor.start_link(children, name="sup", nursery=nursery)
        await otpy.call("gauge", 7)
        snapshot = otpy.tree(sup)
        gauge, plain = snapshot.find("gauge"), snapshot.find("plain")
        assert gauge is not None
        assert plain is not None
        assert (gauge.info, plain.info, snapshot.info) == ("level 7", None, None)
        lines = snapshot.render().splitlines()
        assert lines[1].startswith("├── gauge")
        assert lines[1].endswith("mailbox 0  level 7")
        assert lines[2].endswith("mailbox 0")

    async def test_a_failing_status_line_does_not_break_the_snapshot(self, nursery: trio.Nursery) -> None:
        """If tree_status() raises, the node says so and the rest of the tree is drawn."""
        pid = await Gauge.start_link(nursery=nursery)
        await otpy.call(pid, -1)
        node = otpy.tree(pid)
        assert node.info == "tree_status() failed: ValueError('negative level')"

    async def test_a_stopped_child_has_no_status_line(self, nursery: trio.Nursery) -> None:
        """A child that is not running has no info: its server is gone."""
        sup = await otpy.Supervisor.start_link([Gauge.child_spec(name="gauge")], nursery=nursery)
        await otpy.Supervisor.terminate_child(sup, "gauge")
        node = otpy.tree(sup).find("gauge")
        assert node is not None
        assert node.status == "not running"
        assert node.info is None


def test_public_names_claim_the_otpy_module() -> None:
    """tree and TreeNode are exported from otpy."""
    assert otpy.tree.__module__ == "otpy"
    assert otpy.TreeNode.__module__ == "otpy"


def test_live_tree_example_runs() -> None:
    """examples/live_tree.py reprints the tree while children restart, then stops it and exits 0.

    How long it takes is measured by bench/programs.py, not here.
    """
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "live_tree.py")],
        capture_output=True,
        text=True,
        timeout=30,  # a hang guard, not a speed check: a hung program fails here with TimeoutExpired
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    frames = re.findall(r"^--- t=(\d+\.\d)s ---$", out, flags=re.MULTILINE)
    assert len(frames) == 10
    flaky = [int(n) for n in re.findall(r"^├── flaky .* restarts (\d+) ", out, flags=re.MULTILINE)]
    assert flaky[0] == 0
    assert flaky[-1] >= 3
    assert re.search(r"│   ├── db .* restarts [1-9]", out)
    assert re.search(r"    [├└]── #\d+ +worker +Task job +running", out)
    assert out.rstrip().endswith("tree stopped")
