"""Registry: unique and duplicate keys, cleanup on exit, via names, match/select, dispatch, meta, a model."""

from __future__ import annotations

import collections
import functools
import inspect
from collections.abc import Callable
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import otpy

ANY = otpy.Registry.ANY


class Client(otpy.GenServer):
    """Runs the functions it is called with inside its own process; records its messages."""

    async def init(self, setup: Callable[[], object] | None = None) -> None:
        self.inbox: list[Any] = []
        if setup is not None:
            setup()

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        async def run() -> Any:
            result = request()
            return await result if inspect.iscoroutine(result) else result

        return await outcome.acapture(run)

    async def handle_info(self, message: Any) -> None:
        self.inbox.append(message)


class Trapping(Client):
    """A Client that traps exits."""

    trap_exit = True


async def run_in(pid: otpy.Pid, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run fn(*args, **kwargs) inside the process pid (awaited if async); return its result or raise its error."""
    result: outcome.Outcome[Any] = await otpy.call(pid, functools.partial(fn, *args, **kwargs))
    return result.unwrap()


async def start_registry(nursery: trio.Nursery, keys: str = "unique", name: str = "reg", **kw: Any) -> otpy.Pid:
    return await otpy.Registry.start_link(keys, name=name, nursery=nursery, **kw)  # type: ignore[arg-type]


# --- unique keys ---------------------------------------------------------------------------


class TestUnique:
    async def test_register_and_lookup(self, nursery: trio.Nursery) -> None:
        """A process registers itself under a key and anyone can look it up with its value."""
        await start_registry(nursery)
        client = await Client.start_link(nursery=nursery)
        assert otpy.Registry.lookup("reg", "alice") == []
        await run_in(client, otpy.Registry.register, "reg", "alice", {"role": "admin"})
        assert otpy.Registry.lookup("reg", "alice") == [(client, {"role": "admin"})]
        assert otpy.Registry.count("reg") == 1
        assert otpy.Registry.keys("reg", client) == ["alice"]
        assert otpy.Registry.values("reg", "alice", client) == [{"role": "admin"}]

    async def test_taken_key_raises_already_registered(self, nursery: trio.Nursery) -> None:
        """Registering a key held by another process raises AlreadyRegistered naming the key and the holder."""
        await start_registry(nursery)
        first = await Client.start_link(nursery=nursery)
        second = await Client.start_link(nursery=nursery)
        await run_in(first, otpy.Registry.register, "reg", "k", 1)
        with pytest.raises(otpy.AlreadyRegistered) as info:
            await run_in(second, otpy.Registry.register, "reg", "k", 2)
        assert (info.value.name, info.value.pid) == ("k", first)
        assert otpy.Registry.lookup("reg", "k") == [(first, 1)]
        assert otpy.Registry.keys("reg", second) == []

    async def test_own_key_twice_raises_with_self(self, nursery: trio.Nursery) -> None:
        """Registering a key the caller already holds raises AlreadyRegistered with the caller's pid."""
        await start_registry(nursery)
        client = await Client.start_link(nursery=nursery)
        await run_in(client, otpy.Registry.register, "reg", "k", 1)
        with pytest.raises(otpy.AlreadyRegistered) as info:
            await run_in(client, otpy.Registry.register, "reg", "k", 2)
        assert info.value.pid is client
        assert otpy.Registry.count("reg") == 1

    async def test_one_process_many_keys(self, nursery: trio.Nursery) -> None:
        """One process may hold several keys, listed by keys() in registration order."""
        await start_registry(nursery)
        client = await Client.start_link(nursery=nursery)
        for key in ("a", "b", "c"):
            await run_in(client, otpy.Registry.register, "reg", key, key.upper())
        assert otpy.Registry.keys("reg", client) == ["a", "b", "c"]
        assert otpy.Registry.count("reg") == 3

    async def test_unregister_frees_the_key(self, nursery: trio.Nursery) -> None:
        """After unregister, the key is free for another process."""
        await start_registry(nursery)
        first = await Client.start_link(nursery=nursery)
        second = await Client.start_link(nursery=nursery)
        await run_in(first, otpy.Registry.register, "reg", "k", 1)
        await run_in(first, otpy.Registry.unregister, "reg", "k")
        assert otpy.Registry.lookup("reg", "k") == []
        await run_in(second, otpy.Registry.register, "reg", "k", 2)
        assert otpy.Registry.lookup("reg", "k") == [(second, 2)]

    async def test_unregister_of_someone_elses_key_does_nothing(self, nursery: trio.Nursery) -> None:
        """unregister only removes the caller's own entries."""
        await start_registry(nursery)
        owner = await Client.start_link(nursery=nursery)
        other = await Client.start_link(nursery=nursery)
        await run_in(owner, otpy.Registry.register, "reg", "k", 1)
        await run_in(other, otpy.Registry.unregister, "reg", "k")
        assert otpy.Registry.lookup("reg", "k") == [(owner, 1)]

    async def test_update_value(self, nursery: trio.Nursery) -> None:
        """update_value replaces the caller's value and returns (new, old); None when the caller holds no such key."""
        await start_registry(nursery)
        owner = await Client.start_link(nursery=nursery)
        other = await Client.start_link(nursery=nursery)
        await run_in(owner, otpy.Registry.register, "reg", "hits", 1)
        assert await run_in(owner, otpy.Registry.update_value, "reg", "hits", lambda n: n + 1) == (2, 1)
        assert otpy.Registry.lookup("reg", "hits") == [(owner, 2)]
        assert await run_in(other, otpy.Registry.update_value, "reg", "hits", lambda n: 0) is None
        assert await run_in(owner, otpy.Registry.update_value, "reg", "nope", lambda n: 0) is None
        assert otpy.Registry.lookup("reg", "hits") == [(owner, 2)]

    async def test_register_outside_a_process_raises(self, nursery: trio.Nursery) -> None:
        """register needs a calling process: outside one it raises RuntimeError."""
        await start_registry(nursery)
        with pytest.raises(RuntimeError, match="outside an otpy process"):
            otpy.Registry.register("reg", "k", 1)

    async def test_register_in_init(self, nursery: trio.Nursery) -> None:
        """A process may register itself in its init, before start_link returns."""
        await start_registry(nursery)
        client = await Client.start_link(lambda: otpy.Registry.register("reg", "w", None), nursery=nursery)
        assert otpy.Registry.lookup("reg", "w") == [(client, None)]

    async def test_reads_and_writes_do_not_checkpoint(self, nursery: trio.Nursery) -> None:
        """Every Registry function is synchronous and completes without a checkpoint (no mailbox round trip)."""
        await start_registry(nursery)
        client = await Client.start_link(nursery=nursery)

        def in_client() -> None:
            with trio.testing.assert_no_checkpoints():
                otpy.Registry.register("reg", "k", 1)
                otpy.Registry.update_value("reg", "k", lambda n: n + 1)
                otpy.Registry.unregister("reg", "k")
                otpy.Registry.register("reg", "k", 3)

        await run_in(client, in_client)
        with trio.testing.assert_no_checkpoints():
            assert otpy.Registry.lookup("reg", "k") == [(client, 3)]
            assert otpy.Registry.count("reg") == 1
        names = ["register", "unregister", "lookup", "match", "keys", "values", "count", "select", "dispatch"]
        assert not any(inspect.iscoroutinefunction(getattr(otpy.Registry, name)) for name in names)


# --- duplicate keys ------------------------------------------------------------------------


class TestDuplicate:
    async def test_many_processes_and_values_under_one_key(self, nursery: trio.Nursery) -> None:
        """Under duplicate keys, several processes, and one process several times, register the same key."""
        await start_registry(nursery, "duplicate")
        a = await Client.start_link(nursery=nursery)
        b = await Client.start_link(nursery=nursery)
        await run_in(a, otpy.Registry.register, "reg", "topic", 1)
        await run_in(a, otpy.Registry.register, "reg", "topic", 2)
        await run_in(b, otpy.Registry.register, "reg", "topic", 3)
        assert sorted(otpy.Registry.lookup("reg", "topic"), key=lambda e: e[1]) == [(a, 1), (a, 2), (b, 3)]
        assert otpy.Registry.keys("reg", a) == ["topic", "topic"]
        assert otpy.Registry.values("reg", "topic", a) == [1, 2]
        assert otpy.Registry.count("reg") == 3

    async def test_unregister_removes_all_of_the_callers_entries_under_the_key(self, nursery: trio.Nursery) -> None:
        """unregister removes every entry of the caller under the key, and only the caller's."""
        await start_registry(nursery, "duplicate")
        a = await Client.start_link(nursery=nursery)
        b = await Client.start_link(nursery=nursery)
        for client, value in ((a, 1), (a, 2), (b, 3)):
            await run_in(client, otpy.Registry.register, "reg", "topic", value)
        await run_in(a, otpy.Registry.unregister, "reg", "topic")
        assert otpy.Registry.lookup("reg", "topic") == [(b, 3)]
        assert otpy.Registry.count("reg") == 1

    async def test_update_value_is_for_unique_registries(self, nursery: trio.Nursery) -> None:
        """update_value on a duplicate registry raises ValueError."""
        await start_registry(nursery, "duplicate")
        client = await Client.start_link(nursery=nursery)
        with pytest.raises(ValueError, match="unique"):
            await run_in(client, otpy.Registry.update_value, "reg", "k", lambda v: v)


# --- cleanup --------------------------------------------------------------------------------


class TestCleanup:
    @pytest.mark.parametrize("keys", ["unique", "duplicate"])
    @pytest.mark.parametrize("how", ["stop", "crash", "kill"])
    async def test_entries_vanish_when_the_process_exits(self, nursery: trio.Nursery, keys: str, how: str) -> None:
        """A process's entries are gone as soon as it has exited, whatever the reason."""
        await start_registry(nursery, keys)
        client = await Client.start(nursery=nursery)
        other = await Client.start_link(nursery=nursery)
        for key in ("a", "b"):
            await run_in(client, otpy.Registry.register, "reg", key, 1)
        await run_in(other, otpy.Registry.register, "reg", "c", 2)
        if how == "stop":
            await otpy.stop(client)
        elif how == "kill":
            otpy.exit(client, "kill")
            await client.wait_exited()
        else:
            otpy.cast(client, "crash")  # Client has no handle_cast: the default crashes
            assert isinstance(await client.wait_exited(), NotImplementedError)
        assert not client.alive
        assert otpy.Registry.lookup("reg", "a") == otpy.Registry.lookup("reg", "b") == []
        assert otpy.Registry.keys("reg", client) == []
        assert otpy.Registry.count("reg") == 1
        assert otpy.Registry.lookup("reg", "c") == [(other, 2)]

    async def test_the_exit_frees_a_unique_key(self, nursery: trio.Nursery) -> None:
        """Once its holder has exited, another process can take a unique key."""
        await start_registry(nursery)
        first = await Client.start_link(nursery=nursery)
        await run_in(first, otpy.Registry.register, "reg", "k", 1)
        await otpy.stop(first)
        second = await Client.start_link(nursery=nursery)
        await run_in(second, otpy.Registry.register, "reg", "k", 2)
        assert otpy.Registry.lookup("reg", "k") == [(second, 2)]

    async def test_one_exit_hook_per_process(self, nursery: trio.Nursery) -> None:
        """Registering and unregistering many times adds one exit hook to the process, not one per entry."""
        await start_registry(nursery)
        client = await Client.start_link(nursery=nursery)

        def churn() -> None:
            for i in range(1000):
                otpy.Registry.register("reg", "k", i)
                otpy.Registry.unregister("reg", "k")

        await run_in(client, churn)
        assert client._on_exit is not None
        assert len(client._on_exit) == 1
        assert otpy.Registry.count("reg") == 0

    async def test_registered_processes_are_linked_to_the_registry(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A registered process gets the registry's exit signal, as Elixir links it to the registry."""
        registry = await otpy.Registry.start("unique", name="reg", nursery=nursery)
        client = await Client.start(nursery=nursery)
        await run_in(client, otpy.Registry.register, "reg", "k", 1)
        otpy.exit(registry, "crash")
        with trio.fail_after(1):
            assert await client.wait_exited() == "crash"

    async def test_unregistering_the_last_key_unlinks(self, nursery: trio.Nursery) -> None:
        """A process that has unregistered all its keys no longer gets the registry's exit signal."""
        registry = await otpy.Registry.start("unique", name="reg", nursery=nursery)
        client = await Client.start(nursery=nursery)
        await run_in(client, otpy.Registry.register, "reg", "a", 1)
        await run_in(client, otpy.Registry.register, "reg", "b", 1)
        await run_in(client, otpy.Registry.unregister, "reg", "a")
        await run_in(client, otpy.Registry.unregister, "reg", "b")
        otpy.exit(registry, "crash")
        await registry.wait_exited()
        await trio.testing.wait_all_tasks_blocked()
        assert client.alive

    async def test_unregister_keeps_a_link_the_registry_did_not_make(self, nursery: trio.Nursery) -> None:
        """unregister does not remove a link that existed before the registration (the registry's parent)."""
        owner = await Client.start(nursery=nursery)
        registry = await run_in(owner, otpy.Registry.start_link, "unique", name="reg")
        await run_in(owner, otpy.Registry.register, "reg", "k", 1)
        await run_in(owner, otpy.Registry.unregister, "reg", "k")
        assert owner._links is not None
        assert registry in owner._links

    async def test_registry_exit_drops_every_entry(self, nursery: trio.Nursery) -> None:
        """When the registry exits its entries are gone: the object raises NoProcess, a restart starts empty."""
        registry = await otpy.Registry.start("unique", name="reg", nursery=nursery)
        table = otpy.Registry.resolve("reg")
        client = await Trapping.start(nursery=nursery)
        await run_in(client, otpy.Registry.register, "reg", "k", 1)
        await otpy.stop(registry)
        with pytest.raises(otpy.NoProcess):
            otpy.Registry.lookup(table, "k")
        with pytest.raises(otpy.NoProcess):
            otpy.Registry.lookup("reg", "k")
        await otpy.Registry.start("unique", name="reg", nursery=nursery)
        assert otpy.Registry.lookup("reg", "k") == []
        assert otpy.Registry.count("reg") == 0
        assert client.alive


# --- naming the registry ---------------------------------------------------------------------


class TestResolve:
    async def test_by_name_pid_or_object(self, nursery: trio.Nursery) -> None:
        """A registry is referred to by its name, its pid, or its Registry object."""
        pid = await start_registry(nursery)
        table = otpy.Registry.resolve("reg")
        assert isinstance(table, otpy.Registry)
        assert table is await otpy.get_state(pid) is otpy.Registry.resolve(pid) is otpy.Registry.resolve(table)
        client = await Client.start_link(nursery=nursery)
        await run_in(client, otpy.Registry.register, pid, "k", 1)
        assert otpy.Registry.lookup("reg", "k") == otpy.Registry.lookup(pid, "k") == otpy.Registry.lookup(table, "k")

    async def test_without_a_name(self, nursery: trio.Nursery) -> None:
        """A registry started without a name is used through its pid."""
        pid = await otpy.Registry.start_link("duplicate", nursery=nursery)
        client = await Client.start_link(nursery=nursery)
        await run_in(client, otpy.Registry.register, pid, "k", 1)
        assert otpy.Registry.lookup(pid, "k") == [(client, 1)]

    async def test_via_named_registry(self, nursery: trio.Nursery) -> None:
        """A registry registered under a via name is resolved through it."""
        await start_registry(nursery, name="names")
        pid = await otpy.Registry.start_link("unique", name=otpy.Registry.via("names", "inner"), nursery=nursery)
        assert otpy.Registry.resolve(otpy.Registry.via("names", "inner")) is await otpy.get_state(pid)

    async def test_unknown_registry_raises_no_process(self) -> None:
        """Using a registry name that nobody holds raises NoProcess."""
        with pytest.raises(otpy.NoProcess):
            otpy.Registry.lookup("nobody", "k")

    async def test_a_process_that_is_not_a_registry_raises_type_error(self, nursery: trio.Nursery) -> None:
        """Using a live process that is not a registry raises TypeError."""
        await Client.start_link(name="client", nursery=nursery)
        with pytest.raises(TypeError, match="not a Registry"):
            otpy.Registry.lookup("client", "k")

    async def test_bad_keys_fail_the_start(self, nursery: trio.Nursery) -> None:
        """A registry with keys other than 'unique' or 'duplicate' does not start."""
        with pytest.raises(otpy.StartError) as info:
            await start_registry(nursery, "triplicate")
        assert isinstance(info.value.reason, ValueError)

    async def test_child_spec_under_a_supervisor(self, nursery: trio.Nursery) -> None:
        """Registry.child_spec starts a registry under a supervisor, with its name as child id."""
        spec = otpy.Registry.child_spec(keys="unique", name="reg")
        assert spec.id == "reg"
        sup = await otpy.Supervisor.start_link([spec], nursery=nursery)
        [info] = await otpy.Supervisor.which_children(sup)
        assert isinstance(info.child, otpy.Pid)
        assert otpy.Registry.resolve("reg") is await otpy.get_state(info.child)


# --- via -------------------------------------------------------------------------------------


class TestVia:
    async def test_via_names_a_process(self, nursery: trio.Nursery) -> None:
        """A via name registers the process, works for call/send/whereis, and its value is stored."""
        await start_registry(nursery)
        name = otpy.Registry.via("reg", ("room", 42), value="lobby")
        pid = await Client.start_link(name=name, nursery=nursery)
        assert otpy.whereis(otpy.Registry.via("reg", ("room", 42))) is pid
        assert otpy.Registry.lookup("reg", ("room", 42)) == [(pid, "lobby")]
        assert (await otpy.call(name, lambda: "hi")).unwrap() == "hi"
        otpy.send(name, "ping")
        assert (await otpy.get_state(name)).inbox == ["ping"]

    async def test_taken_via_name_raises_already_registered(self, nursery: trio.Nursery) -> None:
        """Starting a second process under a taken via name raises AlreadyRegistered with the holder."""
        await start_registry(nursery)
        first = await Client.start_link(name=otpy.Registry.via("reg", "w"), nursery=nursery)
        with pytest.raises(otpy.AlreadyRegistered) as info:
            await Client.start_link(name=otpy.Registry.via("reg", "w"), nursery=nursery)
        assert info.value.pid is first
        assert otpy.Registry.count("reg") == 1

    async def test_via_name_is_freed_on_exit(self, nursery: trio.Nursery) -> None:
        """When a via-named process exits, its name is free and whereis returns None."""
        await start_registry(nursery)
        name = otpy.Registry.via("reg", "w")
        pid = await Client.start_link(name=name, nursery=nursery)
        await otpy.stop(pid)
        assert otpy.whereis(name) is None
        assert otpy.Registry.count("reg") == 0
        again = await Client.start_link(name=name, nursery=nursery)
        assert otpy.whereis(name) is again

    async def test_plain_via_with_the_registry_object(self, nursery: trio.Nursery) -> None:
        """otpy.via accepts the Registry object itself, which implements ViaRegistry."""
        await start_registry(nursery)
        table = otpy.Registry.resolve("reg")
        assert isinstance(table, otpy.ViaRegistry)
        pid = await Client.start_link(name=otpy.via(table, "w"), nursery=nursery)
        assert otpy.Registry.lookup("reg", "w") == [(pid, None)]
        assert otpy.whereis(otpy.via(table, "w")) is pid

    async def test_via_is_for_unique_registries(self, nursery: trio.Nursery) -> None:
        """Starting a process under a via name of a duplicate registry raises ValueError."""
        await start_registry(nursery, "duplicate")
        with pytest.raises(ValueError, match="unique"):
            await Client.start_link(name=otpy.Registry.via("reg", "w"), nursery=nursery)

    async def test_via_name_of_a_missing_registry(self, nursery: trio.Nursery) -> None:
        """A via name of a registry that is not running finds nobody, and cannot be registered."""
        name = otpy.Registry.via("nobody", "w")
        assert otpy.whereis(name) is None
        otpy.cast(name, "ignored")
        with pytest.raises(otpy.NoProcess):
            await Client.start_link(name=name, nursery=nursery)

    async def test_via_child_follows_restarts(self, nursery: trio.Nursery) -> None:
        """Under a supervisor, a via-named child is found under its name again after a restart."""
        children = [
            otpy.Registry.child_spec(keys="unique", name="reg"),
            Client.child_spec(name=otpy.Registry.via("reg", "worker")),
        ]
        await otpy.Supervisor.start_link(children, nursery=nursery)
        first = otpy.whereis(otpy.Registry.via("reg", "worker"))
        assert first is not None
        otpy.exit(first, "kill")
        await first.wait_exited()
        await trio.testing.wait_all_tasks_blocked()
        second = otpy.whereis(otpy.Registry.via("reg", "worker"))
        assert second is not None
        assert second is not first
        assert otpy.Registry.lookup("reg", "worker") == [(second, None)]

    async def test_via_by_name_follows_a_registry_restart(self, nursery: trio.Nursery) -> None:
        """A via name that names its registry by name reaches the registry's next incarnation."""
        registry = await otpy.Registry.start("unique", name="reg", nursery=nursery)
        name = otpy.Registry.via("reg", "w")
        await Trapping.start(name=name, nursery=nursery)
        await otpy.stop(registry)
        assert otpy.whereis(name) is None
        await otpy.Registry.start("unique", name="reg", nursery=nursery)
        pid = await Client.start(name=name, nursery=nursery)
        assert otpy.whereis(name) is pid


# --- match, select, dispatch, meta -------------------------------------------------------------


class TestQueries:
    async def _fill(self, nursery: trio.Nursery) -> otpy.Pid:
        await start_registry(nursery, "duplicate")
        client = await Client.start_link(nursery=nursery)
        for value in [(1, "atom", 1), (2, "atom", 2), (3, "other", {"role": "admin", "age": 3}), "plain"]:
            await run_in(client, otpy.Registry.register, "reg", "hello", value)
        return client

    async def test_match_patterns(self, nursery: trio.Nursery) -> None:
        """match filters entries by tuple shape, ANY, class, predicate, partial dict and equality."""
        me = await self._fill(nursery)

        def values(pattern: object) -> list[Any]:
            entries = otpy.Registry.match("reg", "hello", pattern)
            assert all(pid is me for pid, _ in entries)
            return sorted((value for _, value in entries), key=repr)

        assert values((1, ANY, ANY)) == [(1, "atom", 1)]
        assert values((ANY, "atom", ANY)) == [(1, "atom", 1), (2, "atom", 2)]
        assert values((ANY, str, lambda n: isinstance(n, int) and n > 1)) == [(2, "atom", 2)]
        assert values((ANY, ANY, {"role": "admin"})) == [(3, "other", {"role": "admin", "age": 3})]
        assert values((ANY, ANY, {"role": "user"})) == []
        assert values((ANY, ANY)) == []
        assert values([1, ANY, ANY]) == []
        assert values(str) == ["plain"]
        assert values("plain") == ["plain"]
        assert len(values(ANY)) == 4
        assert otpy.Registry.match("reg", "nokey", ANY) == []
        assert otpy.Registry.count_match("reg", "hello", (ANY, "atom", ANY)) == 2

    async def test_unregister_match(self, nursery: trio.Nursery) -> None:
        """unregister_match removes only the caller's entries whose value matches."""
        me = await self._fill(nursery)
        await run_in(me, otpy.Registry.unregister_match, "reg", "hello", (ANY, "atom", ANY))
        assert sorted(map(repr, otpy.Registry.values("reg", "hello", me))) == sorted(
            [repr((3, "other", {"role": "admin", "age": 3})), repr("plain")]
        )
        assert otpy.Registry.count("reg") == 2
        await run_in(me, otpy.Registry.unregister_match, "reg", "hello", ANY)
        assert otpy.Registry.count("reg") == 0
        assert otpy.Registry.keys("reg", me) == []

    async def test_unregister_match_unique(self, nursery: trio.Nursery) -> None:
        """In a unique registry unregister_match removes the entry only if its value matches."""
        await start_registry(nursery)
        me = await Client.start_link(nursery=nursery)
        await run_in(me, otpy.Registry.register, "reg", "hello", "world")
        await run_in(me, otpy.Registry.unregister_match, "reg", "hello", "foo")
        assert otpy.Registry.keys("reg", me) == ["hello"]
        await run_in(me, otpy.Registry.unregister_match, "reg", "hello", "world")
        assert otpy.Registry.keys("reg", me) == []

    async def test_select(self, nursery: trio.Nursery) -> None:
        """select returns (key, pid, value) for every entry, or those a predicate accepts; count_select counts them."""
        await start_registry(nursery)
        a = await Client.start_link(nursery=nursery)
        b = await Client.start_link(nursery=nursery)
        await run_in(a, otpy.Registry.register, "reg", ("room", 1), "x")
        await run_in(b, otpy.Registry.register, "reg", ("room", 2), "y")
        await run_in(b, otpy.Registry.register, "reg", "lobby", "z")
        assert sorted(otpy.Registry.select("reg"), key=repr) == sorted(
            [(("room", 1), a, "x"), (("room", 2), b, "y"), ("lobby", b, "z")], key=repr
        )
        rooms = otpy.Registry.select("reg", lambda key, pid, value: isinstance(key, tuple))
        assert sorted(key[1] for key, _, _ in rooms) == [1, 2]
        assert otpy.Registry.count_select("reg", lambda key, pid, value: pid is b) == 2

    async def test_select_predicate_may_change_the_registry(self, nursery: trio.Nursery) -> None:
        """select runs its predicate over a snapshot, so the predicate may unregister entries."""
        await start_registry(nursery)
        client = await Client.start_link(nursery=nursery)
        for key in ("a", "b", "c"):
            await run_in(client, otpy.Registry.register, "reg", key, None)

        def drop_and_keep(key: Any, pid: otpy.Pid, value: Any) -> bool:
            otpy.Registry.unregister("reg", key)
            return key != "b"

        selected = await run_in(client, otpy.Registry.select, "reg", drop_and_keep)
        assert [key for key, _, _ in selected] == ["a", "c"]
        assert otpy.Registry.count("reg") == 0

    async def test_dispatch_is_pubsub(self, nursery: trio.Nursery) -> None:
        """dispatch calls fn(entries, *args) with every subscriber, which can send them the message."""
        await start_registry(nursery, "duplicate", name="pubsub")
        subscribers = [
            await Client.start_link(lambda: otpy.Registry.register("pubsub", "news", None), nursery=nursery)
            for _ in range(3)
        ]
        other = await Client.start_link(lambda: otpy.Registry.register("pubsub", "sport", None), nursery=nursery)
        seen: list[int] = []

        def broadcast(entries: list[tuple[otpy.Pid, Any]], message: str) -> None:
            seen.append(len(entries))
            for pid, _ in entries:
                otpy.send(pid, ("broadcast", message))

        otpy.Registry.dispatch("pubsub", "news", broadcast, "hello")
        assert seen == [3]
        for pid in [*subscribers, other]:
            inbox = (await otpy.get_state(pid)).inbox
            assert inbox == ([] if pid is other else [("broadcast", "hello")])

    async def test_dispatch_without_entries_does_not_call(self, nursery: trio.Nursery) -> None:
        """dispatch never calls fn when nobody is registered under the key."""
        await start_registry(nursery, "duplicate")
        called: list[object] = []
        otpy.Registry.dispatch("reg", "nobody", called.append)
        assert called == []

    async def test_dispatch_errors_propagate(self, nursery: trio.Nursery) -> None:
        """An error raised by the dispatch function comes out of dispatch."""
        await start_registry(nursery, "duplicate")
        await Client.start_link(lambda: otpy.Registry.register("reg", "k", None), nursery=nursery)

        def fail(entries: object) -> None:
            raise KeyError("bad registration")

        with pytest.raises(KeyError, match="bad registration"):
            otpy.Registry.dispatch("reg", "k", fail)

    async def test_dispatch_refuses_async_functions(self, nursery: trio.Nursery) -> None:
        """dispatch raises TypeError for an async function instead of dropping its coroutine."""
        await start_registry(nursery, "duplicate")
        await Client.start_link(lambda: otpy.Registry.register("reg", "k", None), nursery=nursery)

        async def fn(entries: object) -> None:
            pass

        with pytest.raises(TypeError, match="cannot await"):
            otpy.Registry.dispatch("reg", "k", fn)

    async def test_meta(self, nursery: trio.Nursery) -> None:
        """meta reads metadata given at start or stored by put_meta; delete_meta removes it."""
        await start_registry(nursery, meta={"shard": 3})
        assert otpy.Registry.meta("reg", "shard") == 3
        assert otpy.Registry.meta("reg", "missing") is None
        assert otpy.Registry.meta("reg", "missing", "dflt") == "dflt"
        otpy.Registry.put_meta("reg", ("tuple", "key"), "v")
        assert otpy.Registry.meta("reg", ("tuple", "key")) == "v"
        otpy.Registry.delete_meta("reg", ("tuple", "key"))
        assert otpy.Registry.meta("reg", ("tuple", "key")) is None


# --- scale ------------------------------------------------------------------------------------


class TestScale:
    async def test_lookups_stay_correct_with_100_000_entries(self, nursery: trio.Nursery) -> None:
        """With 100,000 unique entries from 100 processes every lookup is right, and exits remove exactly theirs."""
        await start_registry(nursery)
        clients = [await Client.start(nursery=nursery) for _ in range(100)]

        def register_range(start: int) -> None:
            for i in range(start, start + 1000):
                otpy.Registry.register("reg", i, i * 2)

        for n, client in enumerate(clients):
            await run_in(client, register_range, n * 1000)
        assert otpy.Registry.count("reg") == 100_000
        assert all(otpy.Registry.lookup("reg", i) == [(clients[i // 1000], i * 2)] for i in range(100_000))
        assert otpy.Registry.lookup("reg", 100_000) == []
        for client in clients[::2]:
            otpy.exit(client, "kill")
            await client.wait_exited()
        assert otpy.Registry.count("reg") == 50_000
        for i in range(100_000):
            expected = [] if (i // 1000) % 2 == 0 else [(clients[i // 1000], i * 2)]
            assert otpy.Registry.lookup("reg", i) == expected
        assert len(otpy.Registry.keys("reg", clients[1])) == 1000

    async def test_duplicate_key_with_100_000_entries(self, nursery: trio.Nursery) -> None:
        """A duplicate key holding 100,000 entries looks up all of them, and one process's exit removes its own."""
        await start_registry(nursery, "duplicate")
        clients = [await Client.start(nursery=nursery) for _ in range(10)]

        def register_many(n: int) -> None:
            for i in range(10_000):
                otpy.Registry.register("reg", "topic", (n, i))

        for n, client in enumerate(clients):
            await run_in(client, register_many, n)
        entries = otpy.Registry.lookup("reg", "topic")
        assert len(entries) == 100_000
        assert collections.Counter(pid for pid, _ in entries) == dict.fromkeys(clients, 10_000)
        await otpy.stop(clients[3])
        entries = otpy.Registry.lookup("reg", "topic")
        assert len(entries) == otpy.Registry.count("reg") == 90_000
        assert all(value[0] != 3 for _, value in entries)


# --- a model ----------------------------------------------------------------------------------

KEYS = ["a", "b", "c"]
op_strategy = st.one_of(
    st.tuples(st.just("register"), st.integers(0, 2), st.sampled_from(KEYS), st.integers(0, 3)),
    st.tuples(st.just("unregister"), st.integers(0, 2), st.sampled_from(KEYS)),
    st.tuples(st.just("unregister_match"), st.integers(0, 2), st.sampled_from(KEYS), st.integers(0, 3)),
    st.tuples(st.just("update"), st.integers(0, 2), st.sampled_from(KEYS)),
    st.tuples(st.just("exit"), st.integers(0, 2)),
)


async def run_model(unique: bool, ops: list[tuple[Any, ...]]) -> None:
    """Apply ops to a registry and to a plain model, comparing every observable after each op."""
    # model: key -> list of (client index, generation, value)
    model: dict[str, list[tuple[otpy.Pid, int]]] = {key: [] for key in KEYS}
    async with trio.open_nursery() as nursery:
        await otpy.Registry.start_link("unique" if unique else "duplicate", name="reg", nursery=nursery)
        clients = [await Client.start(nursery=nursery) for _ in range(3)]
        for op in ops:
            kind, index = op[0], op[1]
            client = clients[index]
            if kind == "register":
                _, _, key, value = op
                holders = [pid for pid, _ in model[key]]
                if unique and holders:
                    with pytest.raises(otpy.AlreadyRegistered) as info:
                        await run_in(client, otpy.Registry.register, "reg", key, value)
                    assert info.value.pid is holders[0]
                else:
                    await run_in(client, otpy.Registry.register, "reg", key, value)
                    model[key].append((client, value))
            elif kind == "unregister":
                _, _, key = op
                await run_in(client, otpy.Registry.unregister, "reg", key)
                model[key] = [(pid, v) for pid, v in model[key] if pid is not client]
            elif kind == "unregister_match":
                _, _, key, value = op
                await run_in(client, otpy.Registry.unregister_match, "reg", key, value)
                model[key] = [(pid, v) for pid, v in model[key] if pid is not client or v != value]
            elif kind == "update":
                _, _, key = op
                if unique:
                    result = await run_in(client, otpy.Registry.update_value, "reg", key, lambda v: v + 10)
                    if model[key] and model[key][0][0] is client:
                        old = model[key][0][1]
                        assert result == (old + 10, old)
                        model[key] = [(client, old + 10)]
                    else:
                        assert result is None
            else:
                otpy.exit(client, "kill")
                await client.wait_exited()
                for key in KEYS:
                    model[key] = [(pid, v) for pid, v in model[key] if pid is not client]
                clients[index] = await Client.start(nursery=nursery)
            for key in KEYS:
                assert collections.Counter(otpy.Registry.lookup("reg", key)) == collections.Counter(model[key])
            assert otpy.Registry.count("reg") == sum(len(entries) for entries in model.values())
            for pid in clients:
                expected_keys = [key for key in KEYS for holder, _ in model[key] if holder is pid]
                assert collections.Counter(otpy.Registry.keys("reg", pid)) == collections.Counter(expected_keys)
                for key in KEYS:
                    expected_values = [v for holder, v in model[key] if holder is pid]
                    assert sorted(otpy.Registry.values("reg", key, pid)) == sorted(expected_values)
        nursery.cancel_scope.cancel()


@settings(deadline=None, max_examples=150)
@given(unique=st.booleans(), ops=st.lists(op_strategy, max_size=40))
def test_registry_matches_a_dict_model(unique: bool, ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of registrations, unregistrations, updates and exits leaves the registry equal to a dict model."""
    trio.run(run_model, unique, ops, clock=trio.testing.MockClock(autojump_threshold=0))
