"""A live view of a supervision tree (the process tree of Erlang's observer).

`tree` takes a snapshot of everything under a supervisor and returns it as frozen
values: one `TreeNode` per process, with its children. ``str(node)`` renders it.

How the snapshot is taken:
    Directly, not through the supervisors' mailboxes. `tree` is a plain function: it
    walks the supervisors' child tables without awaiting, and every otpy process runs
    on the same trio thread, so nothing can change while it walks. That gives three
    properties a mailbox round-trip (``otpy.get_state``) would not:

    - the whole tree is one instant, not each supervisor at a different moment;
    - it never blocks: a supervisor busy restarting a slow child, or stuck waiting
      for a child that ignores its shutdown, is exactly what you want to look at, and
      it could not answer a ``get_state`` until it is done;
    - it does not disturb what it measures (no message lands in the mailboxes it
      counts).

    A supervisor in the middle of a restart is shown as it is: the children it has
    stopped and not yet started again are ``"restarting"`` or ``"not running"``.

Restart counts:
    Each supervisor counts, per child, the processes it started after the first one
    (automatic restarts, group restarts and ``restart_child`` alike).

A process's own status line:
    A server that defines a ``tree_status()`` method (plain, not async) adds what it
    returns to its node as ``info``, shown at the end of its line: a session's turns
    and cost, a pool's queue. It is called while the snapshot is taken, so it must be
    quick and must not await; if it raises, the line says so and the snapshot goes on.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Literal

import attrs
import trio

from ._child_spec import ChildSpec, Restart
from ._dynamic_supervisor import DynamicSupervisor, _DynChild
from ._exceptions import NoProcess
from ._gen_server import ServerBase, is_normal_reason
from ._process import Pid, Server, resolve
from ._supervisor import RESTARTING, Supervisor, _Child
from ._task import _fn_name, _TaskRunner

Kind = Literal["supervisor", "worker", "dynamic"]
Status = Literal["running", "restarting", "not running"]


@attrs.frozen
class TreeNode:
    """One process in a `tree` snapshot, with the nodes of its children.

    Attributes:
        id: the child id in its supervisor (``None`` for the root and for the children
            of a DynamicSupervisor, which have no ids).
        name: the registered name, or ``None``.
        label: the process's class (``"Counter"``, ``"Supervisor"``, ``"Task"``).
        kind: ``"supervisor"``, ``"dynamic"`` (a DynamicSupervisor or TaskSupervisor)
            or ``"worker"``.
        status: ``"running"``, ``"restarting"`` (it exited and its supervisor will
            start it again, or is retrying) or ``"not running"``.
        restarts: how many times it has been started again (see the module notes).
        mailbox: messages waiting in its mailbox (0 when not running).
        uptime: seconds since its current process started (``None`` when not running).
        pid: the current process, or ``None`` when there is none.
        restart: the child's restart type (``None`` for the root).
        strategy: a supervisor's strategy (``None`` for workers).
        children: the child nodes, in start order.
        info: what the server's ``tree_status()`` returned (``None`` if it has none,
            or when the process is not running).

    Example::

        snapshot = otpy.tree("app")
        print(snapshot)                       # the whole tree, as text
        cache = snapshot.find("cache")
        assert cache is not None and cache.status == "running"
    """

    id: Hashable
    name: object
    label: str
    kind: Kind
    status: Status
    restarts: int
    mailbox: int
    uptime: float | None
    pid: Pid | None
    restart: Restart | None = None
    strategy: str | None = None
    children: tuple[TreeNode, ...] = ()
    info: str | None = None

    def walk(self) -> Iterator[TreeNode]:
        """This node and every node under it, depth first, in start order.

        Example::

            crashed = [n for n in otpy.tree("app").walk() if n.restarts > 0]
        """
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, key: object) -> TreeNode | None:
        """The first node (depth first) whose id or registered name is ``key``, or ``None``.

        Example::

            assert otpy.tree("app").find("db").kind == "worker"
        """
        for node in self.walk():
            if (node.id is not None and node.id == key) or (node.name is not None and node.name == key):
                return node
        return None

    def render(self) -> str:
        """The tree as aligned text, one line per process (also ``str(node)``).

        Example::

            print(otpy.tree("app").render())
            # app        supervisor  Supervisor one_for_one  running     up 2.3s  restarts 0  mailbox 0
            # ├── clock  worker      Clock                   running     up 2.3s  restarts 0  mailbox 0
            # └── flaky  worker      Flaky                   restarting           restarts 3  mailbox 0
        """
        rows: list[tuple[str, ...]] = []
        self._rows("", "", rows)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)

    def __str__(self) -> str:
        return self.render()

    def _rows(self, lead: str, rest: str, rows: list[tuple[str, ...]]) -> None:
        what = self.label + (f" {self.strategy}" if self.kind == "supervisor" and self.strategy is not None else "")
        rows.append(
            (
                lead + _title(self),
                self.kind,
                what,
                self.status,
                _uptime(self.uptime),
                f"restarts {self.restarts}",
                f"mailbox {self.mailbox}",
                self.info or "",
            )
        )
        for i, child in enumerate(self.children):
            last = i == len(self.children) - 1
            child._rows(rest + ("└── " if last else "├── "), rest + ("    " if last else "│   "), rows)


def _title(node: TreeNode) -> str:
    if node.id is not None:
        title = node.id if isinstance(node.id, str) else repr(node.id)
        if node.name is not None and node.name != node.id:
            title += f" ({_text(node.name)})"
        return title
    if node.name is not None:
        return _text(node.name)
    if node.pid is not None:
        return f"#{node.pid._serial}"
    return "?"


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"up {seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"up {minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"up {hours}h{minutes:02d}m"


# --- taking the snapshot -------------------------------------------------------------------


def tree(root: Server) -> TreeNode:
    """A snapshot of the supervision tree under ``root`` (a supervisor's pid or name).

    It reads the supervisors' state directly, in one go, without awaiting: the snapshot
    is consistent, never blocks on a busy supervisor, and sends no messages. Call it
    from the trio thread, like every otpy function. ``root`` may also be a worker: you
    get a single node.

    Raises:
        NoProcess: no live process is ``root``.

    Example::

        async def show(app):
            while True:
                print(otpy.tree(app), end="\\n\\n")
                await trio.sleep(1)
    """
    pid = resolve(root)
    if pid is None or not pid.alive:
        raise NoProcess(root, "tree")
    return _running_node(pid, None, None, 0, trio.current_time())


def child_pids(pid: Pid) -> list[Pid]:
    """The live children of a supervisor, in start order (internal; empty for a worker)."""
    server = pid._server
    if isinstance(server, Supervisor):
        return [c.pid for c in list(getattr(server, "_children", ())) if isinstance(c.pid, Pid) and c.pid.alive]
    if isinstance(server, DynamicSupervisor):
        return [p for p, c in list(getattr(server, "_children", {}).items()) if not c.restarting and p.alive]
    return []


def _kind(server: ServerBase | None, spec: ChildSpec | None) -> Kind:
    if isinstance(server, DynamicSupervisor):
        return "dynamic"
    if isinstance(server, Supervisor):
        return "supervisor"
    if spec is not None:
        return spec.type
    if server is not None:
        return type(server).child_type
    return "worker"


def _running_node(pid: Pid, child_id: Hashable, spec: ChildSpec | None, restarts: int, now: float) -> TreeNode:
    server = pid._server
    children: tuple[TreeNode, ...] = ()
    strategy: str | None = None
    if isinstance(server, Supervisor):
        strategy = getattr(server, "_strategy", None)
        children = tuple(_supervisor_children(server, now))
    elif isinstance(server, DynamicSupervisor):
        strategy = "one_for_one"
        children = tuple(_dynamic_children(server, now))
    return TreeNode(
        id=child_id,
        name=pid.name,
        label=f"Task {_fn_name(server.fn)}" if isinstance(server, _TaskRunner) else pid._label,
        kind=_kind(server, spec),
        status="running",
        restarts=restarts,
        mailbox=pid.mailbox_size,
        uptime=now - pid.started_at,
        pid=pid,
        restart=spec.restart if spec is not None else None,
        strategy=strategy,
        children=children,
        info=_info(server),
    )


def _info(server: ServerBase | None) -> str | None:
    """The server's own status line: what its ``tree_status()`` returns, if it has one."""
    method = getattr(server, "tree_status", None)
    if method is None or not callable(method):
        return None
    try:
        line = method()
    except Exception as exc:  # noqa: BLE001 (a broken status line must not break the snapshot)
        return f"tree_status() failed: {exc!r}"
    return None if line is None else str(line)


def _supervisor_children(server: Supervisor, now: float) -> Iterator[TreeNode]:
    for child in list(getattr(server, "_children", ())):
        current = child.pid
        if current == RESTARTING:
            yield _child_node(child, child.spec, child.spec.id, None, True, now)
        else:
            yield _child_node(
                child, child.spec, child.spec.id, current if isinstance(current, Pid) else None, False, now
            )


def _dynamic_children(server: DynamicSupervisor, now: float) -> Iterator[TreeNode]:
    for pid, child in list(getattr(server, "_children", {}).items()):
        yield _child_node(child, child.spec, None, pid, child.restarting, now)


def _child_node(
    record: _Child | _DynChild, spec: ChildSpec, child_id: Hashable, pid: Pid | None, restarting: bool, now: float
) -> TreeNode:
    if pid is not None and pid.alive and not restarting:
        return _running_node(pid, child_id, spec, record.restarts, now)
    status: Status
    if restarting:
        status = "restarting"
    elif pid is not None and _will_restart(spec, pid.exit_reason):
        status = "restarting"  # it exited; its supervisor has not handled the exit yet
    else:
        status = "not running"
    return TreeNode(
        id=child_id,
        name=pid.name if pid is not None else None,
        label=pid._label if pid is not None else _spec_label(spec),
        kind=spec.type,
        status=status,
        restarts=record.restarts,
        mailbox=0,
        uptime=None,
        pid=None,
        restart=spec.restart,
    )


def _spec_label(spec: ChildSpec) -> str:
    """The class a child spec starts, when it says so (``Cls.child_spec`` does), else ``"?"``."""
    start = getattr(spec.start, "func", spec.start)
    owner = getattr(start, "__self__", None)
    return owner.__name__ if isinstance(owner, type) else "?"


def _will_restart(spec: ChildSpec, reason: object) -> bool:
    if spec.restart == "permanent":
        return True
    return spec.restart == "transient" and not is_normal_reason(reason)
