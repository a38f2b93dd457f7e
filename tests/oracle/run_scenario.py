#!/usr/bin/env python3
"""Run one OTP oracle scenario on otpy and print its trace as JSON lines.

    python tests/oracle/run_scenario.py SCENARIO.json [--out TRACE.jsonl] [--real-time]

The scenario and trace formats are those of ``shared/oracle/README.md``: the same
scripted workers and supervisors, the same steps, the same events, rendered with the
same term conventions, in the same canonical order. Exit codes: 0 ok, 3 the scenario
timed out (the partial trace ends with ``{"ev":"runner_timeout"}``), 64 usage error.

Time is virtual by default (``trio.testing.MockClock`` with autojump): sleeps, init
delays, shutdown timeouts and restart-intensity windows run instantly and
deterministically. ``--real-time`` uses the wall clock instead.

Where trio cannot do what OTP does, the runner does the closest honest thing:
``kill`` of a process stops it at its next checkpoint (every scripted worker is parked
in a checkpoint, so this matches OTP here; a task that never checkpoints could not be
killed at all).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import structlog
import trio
import trio.testing

import otpy
from otpy._process import Pid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trace_tool import canonicalize, relations

UNDEFINED = "undefined"


# --- scenario terms ------------------------------------------------------------------


def json_to_term(value: Any) -> Any:
    """Scenario JSON -> the Python value otpy sees: arrays become tuples, null 'undefined'."""
    if isinstance(value, list):
        return tuple(json_to_term(v) for v in value)
    if isinstance(value, dict) and set(value) == {"list"}:
        return [json_to_term(v) for v in value["list"]]
    if value is None:
        return UNDEFINED
    return value


def parse_init(spec: Any) -> list[Any]:
    items = spec if isinstance(spec, list) else [spec]
    return [parse_init_one(item) for item in items]


def parse_init_one(item: Any) -> Any:
    if item == "ok":
        return ("ok",)
    if item == "ignore":
        return ("ignore",)
    if item == "error":
        return ("error", "init_failed")
    if isinstance(item, dict) and "error" in item:
        return ("error", json_to_term(item["error"]))
    if isinstance(item, dict) and "delay_ms" in item:
        return ("delay", item["delay_ms"], parse_init_one(item["result"]))
    raise ValueError(f"bad init result {item!r}")


class Store:
    """Node configs, parents, incarnation counters and init scripts (oracle_store)."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.parents: dict[str, str | None] = {}
        self.incs: dict[str, int] = {}
        self.inits: dict[str, tuple[list[Any], int]] = {}

    def put(self, node: dict[str, Any], parent: str | None) -> None:
        node_id = node["id"]
        self.nodes[node_id] = node
        self.parents[node_id] = parent
        if "init" in node:
            self.inits[node_id] = (parse_init(node["init"]), self.incs.get(node_id, 0))

    def register(self, node: dict[str, Any], parent: str | None) -> None:
        if self.nodes.get(node["id"]) != node:
            self.put(node, parent)

    def next_inc(self, node_id: str) -> int:
        self.incs[node_id] = self.incs.get(node_id, 0) + 1
        return self.incs[node_id]

    def set_init(self, node_id: str, init: Any) -> None:
        self.inits[node_id] = (parse_init(init), self.incs.get(node_id, 0))

    def init_result(self, node_id: str, inc: int) -> Any:
        if node_id not in self.inits:
            return ("ok",)
        results, base = self.inits[node_id]
        n = inc - base
        if n > len(results):
            return results[-1]
        if n >= 1:
            return results[n - 1]
        return results[0]

    def is_dynamic(self, node_id: str) -> bool:
        return self.nodes.get(node_id, {}).get("type") == "dynamic_supervisor"


def parse_tree(
    json_node: dict[str, Any], default_type: str, parent: str | None
) -> list[tuple[dict[str, Any], str | None]]:
    """Depth-first (node, parent) pairs, as the Erlang runner's parse_tree."""
    node = dict(json_node)
    node.setdefault("type", default_type)
    if "id" not in node:
        if parent is not None:
            raise ValueError(f"missing id in {json_node!r}")
        node["id"] = "top"
    kids = [parse_tree(child, "worker", node["id"]) for child in json_node.get("children", [])]
    node["children"] = [k[0][0]["id"] for k in kids]
    out = [(node, parent)]
    for k in kids:
        out.extend(k)
    return out


# --- the collector ---------------------------------------------------------------------


class Collector(otpy.GenServer):
    """Records events in arrival order and monitors every started process."""

    async def init(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.labels: dict[Pid, tuple[str, int, str]] = {}
        self.latest: dict[str, Pid] = {}
        self.live: dict[Pid, None] = {}

    def record(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("started", kind, node_id, inc, pid):
                self.labels[pid] = (node_id, inc, kind)
                self.latest[node_id] = pid
                self.live[pid] = None
                otpy.monitor(pid)
                self.record({"ev": "start", "id": node_id, "inc": inc, "kind": kind})
            case ("init_fail", node_id, inc, result):
                self.record({"ev": "init_fail", "id": node_id, "inc": inc, "result": result})
            case ("terminated", node_id, inc, reason):
                self.record({"ev": "terminate", "id": node_id, "inc": inc, "reason": reason})
            case ("record", event):
                self.record(event)
            case "sync":
                pass
        return None

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, otpy.Down) and message.pid in self.labels:
            node_id, inc, kind = self.labels[message.pid]
            self.live.pop(message.pid, None)
            self.record({"ev": "exit", "id": node_id, "inc": inc, "kind": kind, "reason": message.reason})


class Runner:
    def __init__(self, scenario: dict[str, Any]) -> None:
        self.scenario = scenario
        self.store = Store()
        self.collector: Collector
        self.collector_pid: Pid
        self.nursery: trio.Nursery
        self.top_id = "top"
        self.timed_out = False
        self.frozen: list[dict[str, Any]] = []

    # --- rendering -----------------------------------------------------------------------

    def render(self, value: Any) -> Any:
        if isinstance(value, Pid):
            label = self.collector.labels.get(value)
            return f"{label[0]}#{label[1]}" if label else "<pid>"
        if isinstance(value, bool) or value is None:
            return UNDEFINED if value is None else value
        if isinstance(value, (str, int, float)):
            return value
        if isinstance(value, _Sorted):
            rows = [self.render(v) for v in value]
            return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True))
        if isinstance(value, (tuple, list)):
            return [self.render(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self.render(v) for k, v in value.items()}
        if isinstance(value, BaseException):
            return self.render(self.exception_term(value))
        return repr(value)

    def child_spec_error_term(self, exc: otpy.InvalidChildSpec) -> Any:
        if exc.conflict is not None:
            return ("bad_combination", (exc.conflict, ("significant", True)))
        if exc.field == "id" and exc.problem == "is missing":
            return "missing_id"
        if exc.field == "start" and exc.problem == "is missing":
            return "missing_start"
        if exc.field == "id":
            return ("duplicate_child_name", exc.value)
        names = {
            "restart": "invalid_restart_type",
            "type": "invalid_child_type",
            "shutdown": "invalid_shutdown",
            "significant": "invalid_significant",
            "start": "invalid_mfa",
        }
        return (names.get(exc.field, "invalid_child_spec"), self.raw(exc.value))

    def raw(self, value: Any) -> Any:
        return value

    def exception_term(self, exc: BaseException) -> Any:
        """An otpy exception as the OTP term it stands for, when used as an exit reason."""
        if isinstance(exc, otpy.InvalidSupervisorFlags):
            names = {
                "strategy": "invalid_strategy",
                "max_restarts": "invalid_intensity",
                "max_seconds": "invalid_period",
                "auto_shutdown": "invalid_auto_shutdown",
                "max_children": "invalid_max_children",
            }
            return ("supervisor_data", (names[exc.flag], exc.value))
        if isinstance(exc, otpy.InvalidChildSpec):
            return ("start_spec", self.child_spec_error_term(exc))
        return repr(exc)

    def error_term(self, exc: BaseException, op: str, dynamic: bool) -> Any:
        """An API error as OTP's ``{error, ...}`` (or ``{'EXIT', ...}``) return value."""
        match exc:
            case otpy.NoProcess():
                return ("EXIT", "noproc")
            case otpy.ServerExited(reason=reason):
                return ("EXIT", reason)
            case otpy.AlreadyStarted(pid=pid) | otpy.AlreadyRegistered(pid=pid):
                return ("error", ("already_started", pid))
            case otpy.AlreadyPresent():
                return ("error", "already_present")
            case otpy.ChildNotFound():
                return ("error", "not_found")
            case otpy.ChildRunning():
                return ("error", "running")
            case otpy.ChildRestarting():
                return ("error", "restarting")
            case otpy.MaxChildren():
                return ("error", "max_children")
            case otpy.InvalidChildSpec():
                return ("error", self.child_spec_error_term(exc))
            case otpy.StartError(child_id=child_id, reason=reason):
                if op == "start_child" and not dynamic:
                    return ("error", (reason, {"child_record": child_id}))
                return ("error", reason)
        raise exc

    # --- events --------------------------------------------------------------------------

    async def record(self, event: dict[str, Any]) -> None:
        await otpy.call(self.collector_pid, ("record", event), math.inf)

    async def sync(self) -> None:
        # Everything that can run at this instant runs first (the consequences of the
        # step, such as a parent reacting to an exit), then the collector has handled
        # every event queued before this call. wait_all_tasks_blocked does not advance
        # the mock clock.
        await trio.testing.wait_all_tasks_blocked()
        await otpy.call(self.collector_pid, "sync", math.inf)

    def output(self) -> list[dict[str, Any]]:
        events = []
        for event in self.frozen:
            rendered = {}
            for key, value in event.items():
                rendered[key] = (
                    value
                    if key in ("ev", "id", "inc", "kind", "op", "i") or event["ev"] == "step"
                    else self.render(value)
                )
            events.append(rendered)
        parents, dynamic = relations(self.scenario)
        return canonicalize(events, parents, dynamic)

    # --- starting nodes ----------------------------------------------------------------------

    def child_spec(self, node_id: str) -> dict[str, Any]:
        node = self.store.nodes[node_id]
        cls = {"worker": ScriptedWorker, "supervisor": ScriptedSupervisor, "dynamic_supervisor": ScriptedDynamic}
        node_type = node.get("type", "worker")
        spec: dict[str, Any] = {
            "id": node_id,
            "start": functools.partial(cls[node_type].start_link, self, node_id),
            "type": "worker" if node_type == "worker" else "supervisor",
        }
        if "restart" in node:
            spec["restart"] = node["restart"]
        if "shutdown" in node:
            shutdown = node["shutdown"]
            if type(shutdown) is int and shutdown >= 0:
                shutdown = shutdown / 1000
            spec["shutdown"] = shutdown
        if "significant" in node:
            spec["significant"] = node["significant"]
        return spec

    def latest(self, node_id: str) -> Pid | None:
        return self.collector.latest.get(node_id)

    def dead_pid(self) -> Pid:
        pid = Pid(None, None, False)
        pid._finish("normal")
        return pid

    def child_ref(self, sup_id: str, step: dict[str, Any]) -> Any:
        by_pid = step.get("by_pid", self.store.is_dynamic(sup_id))
        if by_pid:
            return self.latest(step["id"]) or self.dead_pid()
        return step["id"]

    # --- steps --------------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.collector_pid = await Collector.start_link(nursery=nursery)
            self.collector = await otpy.get_state(self.collector_pid)
            top = self.scenario["supervisor"]
            nodes = parse_tree(top, "supervisor", None)
            for node, parent in nodes:
                self.store.put(node, parent)
            self.top_id = nodes[0][0]["id"]
            timeout = self.scenario.get("timeout_ms", 60000) / 1000
            try:
                with trio.fail_after(timeout):
                    await self.run_steps()
            except trio.TooSlowError:
                self.collector.record({"ev": "runner_timeout"})
                self.timed_out = True
            # Nothing after "end" is traced (the Erlang runner halts the VM): freeze the
            # trace, then kill what is left so that no hung terminate keeps the run alive.
            self.frozen = list(self.collector.events)
            for pid in list(self.collector.labels):
                otpy.exit(pid, "kill")
            nursery.cancel_scope.cancel()

    async def run_steps(self) -> None:
        self.collector.record({"ev": "step", "i": 0, "op": "start_supervisor"})
        top = self.store.nodes[self.top_id]
        cls = ScriptedDynamic if top["type"] == "dynamic_supervisor" else ScriptedSupervisor
        try:
            pid = await cls.start_link(self, self.top_id, nursery=self.nursery)
            value: Any = ("ok", pid)
        except otpy.StartIgnored:
            value = "ignore"
        except otpy.StartError as exc:
            value = ("error", exc.reason)
        await self.sync()
        await self.record({"ev": "result", "i": 0, "op": "start_supervisor", "value": value})
        await self.settle()
        for i, step in enumerate(self.scenario.get("steps", []), start=1):
            op = step["op"]
            echo = {k: _sorted_keys(v) for k, v in sorted(step.items()) if k not in ("op", "comment", "settle")}
            await self.record({"ev": "step", "i": i, "op": op, **echo})
            result = await self.execute(op, step)
            if result is not _NONE:
                await self.sync()
                await self.record({"ev": "result", "i": i, "op": op, "value": result})
            if step.get("settle", True):
                await self.settle()
            else:
                await trio.sleep(0.05)
        await self.record({"ev": "end"})

    async def settle(self) -> None:
        quiet = 0
        while quiet < 3:
            before = len(self.collector.events)
            for pid, (_, _, kind) in list(self.collector.labels.items()):
                if kind == "supervisor" and pid.alive:
                    with contextlib.suppress(otpy.CallError):
                        await otpy.get_state(pid, math.inf)
            await trio.sleep(0.002)
            busy = any(pid.mailbox_size > 0 for pid in self.collector.live)
            await self.sync()
            quiet = 0 if busy or len(self.collector.events) != before else quiet + 1

    async def with_live(self, node_id: str, action: Any) -> Any:
        pid = self.latest(node_id)
        if pid is None or not pid.alive:
            return "not_running"
        action(pid)
        await pid.wait_exited()
        return _NONE

    async def api(self, op: str, sup_id: str, fn: Any) -> Any:
        if self.latest(sup_id) is None:
            return ("EXIT", "noproc")
        sup = self.latest(sup_id)
        dynamic = self.store.is_dynamic(sup_id)
        try:
            return await fn(sup)
        except otpy.OtpError as exc:
            return self.error_term(exc, op, dynamic)

    async def execute(self, op: str, step: dict[str, Any]) -> Any:
        sup_id = step.get("sup", self.top_id)
        dynamic = self.store.is_dynamic(sup_id)
        api = otpy.DynamicSupervisor if dynamic else otpy.Supervisor
        match op:
            case "crash" | "exit_normal":
                reason = "normal" if op == "exit_normal" else json_to_term(step.get("reason", "boom"))
                node = self.store.nodes[step["id"]]
                if node.get("type", "worker") == "worker":
                    return await self.with_live(step["id"], lambda pid: otpy.send(pid, ("crash", reason)))
                return await self.with_live(
                    step["id"], lambda pid: self.nursery.start_soon(self.stop_quietly, pid, reason)
                )
            case "kill":
                return await self.with_live(step["id"], lambda pid: otpy.exit(pid, "kill"))
            case "exit_signal":
                pid = self.latest(step["id"])
                if pid is None or not pid.alive:
                    return "not_running"
                otpy.exit(pid, json_to_term(step.get("reason", "boom")))
                return _NONE
            case "sleep":
                await trio.sleep(step["ms"] / 1000)
                return _NONE
            case "set_init":
                self.store.set_init(step["id"], step["init"])
                return _NONE
            case "terminate_child":
                ref = self.child_ref(sup_id, step)

                async def terminate(sup: Pid) -> Any:
                    await api.terminate_child(sup, ref)
                    return "ok"

                return await self.api(op, sup_id, terminate)
            case "restart_child" | "delete_child":
                if dynamic:
                    return "unsupported"
                ref = self.child_ref(sup_id, step)

                async def restart_or_delete(sup: Pid) -> Any:
                    if op == "delete_child":
                        await otpy.Supervisor.delete_child(sup, ref)
                        return "ok"
                    pid = await otpy.Supervisor.restart_child(sup, ref)
                    return ("ok", pid if pid is not None else UNDEFINED)

                return await self.api(op, sup_id, restart_or_delete)
            case "start_child":
                nodes = parse_tree(step["spec"], "worker", sup_id)
                for node, parent in nodes:
                    self.store.register(node, parent)
                spec = self.child_spec(nodes[0][0]["id"])

                async def start(sup: Pid) -> Any:
                    pid = await api.start_child(sup, spec)
                    if pid is None:
                        return "ignore" if dynamic else ("ok", UNDEFINED)
                    return ("ok", pid)

                return await self.api(op, sup_id, start)
            case "which_children":

                async def which(sup: Pid) -> Any:
                    rows = [
                        {
                            "id": UNDEFINED if info.id is None else info.id,
                            "child": UNDEFINED if info.child is None else info.child,
                            "type": info.type,
                        }
                        for info in await api.which_children(sup)
                    ]
                    if dynamic:
                        return _Sorted(rows)
                    return rows

                return await self.api(op, sup_id, which)
            case "count_children":

                async def count(sup: Pid) -> Any:
                    c = await api.count_children(sup)
                    return {"specs": c.specs, "active": c.active, "supervisors": c.supervisors, "workers": c.workers}

                return await self.api(op, sup_id, count)
            case "stop_supervisor":
                reason = json_to_term(step.get("reason", "shutdown"))
                how = step.get("how", "exit" if sup_id == self.top_id else "stop")
                if how == "exit":
                    return await self.with_live(sup_id, lambda pid: otpy.exit(pid, reason))

                async def stop(sup: Pid) -> Any:
                    await otpy.stop(sup, reason, math.inf)
                    return "ok"

                return await self.api(op, sup_id, stop)
        raise ValueError(f"unknown op {op!r}")

    async def stop_quietly(self, pid: Pid, reason: Any) -> None:
        with contextlib.suppress(otpy.OtpError):
            await otpy.stop(pid, reason, math.inf)


def _sorted_keys(value: Any) -> Any:
    """JSON objects echoed in step events have sorted keys, as Erlang maps print."""
    if isinstance(value, dict):
        return {k: _sorted_keys(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


class _NoneType:
    pass


_NONE = _NoneType()


class _Sorted(list[Any]):
    """A which_children result of a dynamic supervisor: sorted once rendered."""


# --- scripted processes ------------------------------------------------------------------------


async def _init_script(runner: Runner, node_id: str, inc: int) -> Any:
    result = runner.store.init_result(node_id, inc)
    if result[0] == "delay":
        await trio.sleep(result[1] / 1000)
        result = result[2]
    return result


class ScriptedWorker(otpy.GenServer):
    """oracle_worker: a gen_server whose init, trap_exit and terminate come from the scenario."""

    async def init(self, runner: Runner, node_id: str) -> Any:
        self.runner, self.node_id = runner, node_id
        node = runner.store.nodes[node_id]
        otpy.trap_exit(node.get("trap_exit", True))
        self.inc = runner.store.next_inc(node_id)
        result = await _init_script(runner, node_id, self.inc)
        collector = runner.collector_pid
        if result[0] == "ok":
            await otpy.call(collector, ("started", "worker", node_id, self.inc, otpy.self()), math.inf)
            self.crashing = False
            self.terminate_mode = node.get("terminate", "graceful")
            return None
        if result[0] == "ignore":
            await otpy.call(collector, ("init_fail", node_id, self.inc, "ignore"), math.inf)
            return otpy.Ignore()
        await otpy.call(collector, ("init_fail", node_id, self.inc, ("error", result[1])), math.inf)
        return otpy.Stop(result[1])

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return "ok"

    async def handle_cast(self, request: Any) -> None:
        return None

    async def handle_info(self, message: Any) -> Any:
        if type(message) is tuple and message[0] == "crash":
            self.crashing = True
            return otpy.Stop(message[1])
        return None

    async def terminate(self, reason: object) -> None:
        await otpy.call(self.runner.collector_pid, ("terminated", self.node_id, self.inc, reason), math.inf)
        if self.crashing:
            return
        mode = self.terminate_mode
        if mode == "hang":
            await trio.sleep_forever()
        elif isinstance(mode, dict) and "sleep" in mode:
            await trio.sleep(mode["sleep"] / 1000)
        elif isinstance(mode, dict) and "exit" in mode:
            raise otpy.ProcessExit(json_to_term(mode["exit"]))


async def _supervisor_init(runner: Runner, node_id: str) -> tuple[dict[str, Any], int] | None:
    node = runner.store.nodes[node_id]
    inc = runner.store.next_inc(node_id)
    if runner.store.init_result(node_id, inc)[0] == "ignore":
        await otpy.call(runner.collector_pid, ("init_fail", node_id, inc, "ignore"), math.inf)
        return None
    await otpy.call(runner.collector_pid, ("started", "supervisor", node_id, inc, otpy.self()), math.inf)
    return node, inc


class ScriptedSupervisor(otpy.Supervisor):
    """oracle_sup: an OTP supervisor built from the scenario node (OTP's defaults: 1 restart in 5 s)."""

    async def init(self, runner: Runner, node_id: str) -> Any:  # type: ignore[override]
        started = await _supervisor_init(runner, node_id)
        if started is None:
            return otpy.Ignore()
        node, _ = started
        return otpy.SupervisorSpec(
            [runner.child_spec(child) for child in node.get("children", [])],
            strategy=node.get("strategy", "one_for_one"),
            max_restarts=node.get("intensity", 1),
            max_seconds=node.get("period", 5),
            auto_shutdown=node.get("auto_shutdown", "never"),
        )


class ScriptedDynamic(otpy.DynamicSupervisor):
    """oracle_dynsup: Elixir's DynamicSupervisor built from the scenario node (defaults: 3 in 5 s)."""

    async def init(self, runner: Runner, node_id: str) -> Any:  # type: ignore[override]
        started = await _supervisor_init(runner, node_id)
        if started is None:
            return otpy.Ignore()
        node, _ = started
        max_children = node.get("max_children", "infinity")
        return otpy.DynamicSupervisorSpec(
            max_children=math.inf if max_children == "infinity" else max_children,
            max_restarts=node.get("intensity", 3),
            max_seconds=node.get("period", 5),
            strategy=node.get("strategy", "one_for_one"),
        )


def run(scenario: dict[str, Any], *, real_time: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """Run ``scenario`` on otpy; return its canonical trace and whether it timed out."""
    runner = Runner(scenario)
    clock = None if real_time else trio.testing.MockClock(autojump_threshold=0)
    trio.run(runner.run, clock=clock)
    return runner.output(), runner.timed_out


def to_jsonl(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n" for event in events)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    out = None
    if "--out" in argv:
        out = argv[argv.index("--out") + 1]
        args.remove(out)
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 64
    # The runner is an application, so it may configure structlog: reports go to
    # stderr (only with --verbose), so that stdout carries nothing but the trace.
    level = logging.DEBUG if "--verbose" in argv else logging.CRITICAL
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    events, timed_out = run(json.loads(Path(args[0]).read_text()), real_time="--real-time" in argv)
    text = to_jsonl(events)
    if out:
        Path(out).write_text(text)
    else:
        sys.stdout.write(text)
    if timed_out:
        print("runner: scenario timed out", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
