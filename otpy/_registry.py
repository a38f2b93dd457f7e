"""Registry: a local key-value store of processes (Elixir's ``Registry``).

The entries live in plain dicts owned by the `Registry` object; every function here
reads and writes them directly, in the calling task, never through the registry's
mailbox. On one trio thread nothing runs between two statements without an ``await``,
so this is as safe as ETS's atomic operations, and a lookup is a dict lookup. The
registry *process* exists to be supervised and named, and to take the entries with it
when it exits.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias

import attrs
import trio

from ._exceptions import AlreadyRegistered, NoProcess
from ._gen_server import GenServer, NoReply, Stop
from ._process import ExitSignal, Name, Pid, Via, link_pair, resolve
from ._process import self as _self_pid

if TYPE_CHECKING:
    from ._process import ViaRegistry

Keys = Literal["unique", "duplicate"]


class _Any:
    __slots__ = ()

    def __repr__(self) -> str:
        return "Registry.ANY"


ANY: Final = _Any()


def _matches(pattern: object, value: object) -> bool:
    """Whether ``value`` matches ``pattern`` (see `Registry.match`)."""
    if pattern is ANY:
        return True
    if isinstance(pattern, type):
        return isinstance(value, pattern)
    if callable(pattern):
        return bool(pattern(value))
    if isinstance(pattern, (tuple, list)):
        return (
            isinstance(value, tuple if isinstance(pattern, tuple) else list)
            and len(value) == len(pattern)
            and all(_matches(p, v) for p, v in zip(pattern, value, strict=True))
        )
    if isinstance(pattern, Mapping):
        if not isinstance(value, Mapping):
            return False
        missing = object()
        return all((item := value.get(k, missing)) is not missing and _matches(p, item) for k, p in pattern.items())
    return bool(pattern == value)


def _unlink_pair(a: Pid, b: Pid) -> None:
    if a._links is not None:
        a._links.discard(b)
    if b._links is not None:
        b._links.discard(a)


def _exit_hook_for(registry: Registry) -> Callable[[Pid, object], None]:
    # One hook function per registry, shared by all its processes. It holds the registry
    # weakly: a long-lived process registered in a registry that has exited does not
    # keep the dead registry's object alive.
    ref = weakref.ref(registry)

    def hook(pid: Pid, _reason: object) -> None:
        registry = ref()
        if registry is not None:
            registry._pid_exited(pid)

    return hook


class Registry(GenServer):
    """A local key-value store of processes: name lookups, properties, dispatch, pub/sub.

    A process registers itself under a key, with a value. With ``keys="unique"`` a key
    points to at most one process; with ``keys="duplicate"`` to any number. Either way
    one process may hold many keys. When a process exits, its entries go with it.

    Example:
        Start a registry (usually as a supervised child), register a process, and look
        it up from anywhere::

            class Worker(otpy.GenServer):
                async def init(self, user):
                    otpy.Registry.register("reg", user, {"role": "admin"})   # registers itself

            async def main():
                async with trio.open_nursery() as nursery:
                    await otpy.Registry.start_link(keys="unique", name="reg", nursery=nursery)
                    worker = await Worker.start_link("alice", nursery=nursery)
                    assert otpy.Registry.lookup("reg", "alice") == [(worker, {"role": "admin"})]
                    await otpy.stop(worker)
                    assert otpy.Registry.lookup("reg", "alice") == []    # gone with its process
                    nursery.cancel_scope.cancel()

            trio.run(main)

        ``register`` always registers the *calling* process (``otpy.self()``), so it runs
        inside a process: in ``init``, or in a callback. Lookups run anywhere.

    In a supervision tree:
        ``otpy.Registry.child_spec(keys="unique", name="reg")``. Start it before the
        processes that use it: it must outlive them.

    Using in via:
        A unique registry names processes wherever a name works —
        ``start_link(name=...)``, `call`, `cast`, `send`, child specs::

            name = otpy.Registry.via("reg", ("room", 42))
            await Room.start_link(name=name, nursery=nursery)
            await otpy.call(name, "members")
            assert otpy.Registry.lookup("reg", ("room", 42)) == [(otpy.whereis(name), None)]

        ``Registry.via(registry, key, value)`` stores ``value`` with the entry (Elixir's
        ``{:via, Registry, {registry, key, value}}``). Naming the registry by its name
        (not its pid) makes the name follow the registry across restarts. A taken name
        makes ``start_link`` raise `AlreadyRegistered`. Duplicate registries cannot be
        used in via.

    Using as a dispatcher and as a PubSub:
        `dispatch` calls a function with every ``(pid, value)`` under a key, in the
        calling task; the registered processes take no part unless the function sends
        them something. That is a local pub/sub in three lines::

            # each subscriber, in its init:  otpy.Registry.register("pubsub", "news", None)
            def broadcast(entries, message):
                for pid, _value in entries:
                    otpy.send(pid, message)

            otpy.Registry.dispatch("pubsub", "news", broadcast, ("news", "hello"))

        If the function raises, the error comes out of `dispatch` and the rest of the
        entries are not visited: wrap what may fail, as Elixir's docs advise.

    Registrations and staleness:
        otpy removes a process's entries at the moment its exit is recorded (the moment
        `Pid.alive` turns false), synchronously, so — unlike Elixir, where removal is
        asynchronous — a lookup never returns a process that has exited. That does not
        make a lookup a guarantee:

        - A process that has been sent an exit signal stops at its next checkpoint;
          until then it is alive and still registered.
        - A lookup returns a snapshot. The process may exit right after, before you
          use the pid: `send` and `cast` to a dead process do nothing, `call` raises
          `NoProcess`, `monitor` delivers a ``Down`` with ``"noproc"`` — code as if it
          could happen, because it can.
        - Values are shared by reference, not copied (ETS copies them): mutating a
          value you looked up mutates the entry. Store immutable values, or replace
          them with `update_value`.

    The registry process:
        Each registered process is linked to the registry (the registry traps exits),
        as in Elixir: if the registry stops or crashes, its processes get the exit
        signal; and when the registry exits, all its entries are gone — a restarted
        registry starts empty. Functions raise `NoProcess` for a registry that is not
        running. A `Registry` object (`Registry.resolve`) stays bound to one
        incarnation; refer to the registry by name to follow restarts.

    Keys:
        Keys are compared as dict keys (hash and ``==``), so ``1``, ``1.0`` and
        ``True`` are the same key — Elixir compares with ``===``. Keys must be hashable.

    Not implemented:
        partitions (there is one thread), listeners, ``lock``, and match specs:
        `match` takes a Python pattern and `select` a predicate instead.
    """

    trap_exit = True
    """Exits of linked (registered) processes arrive as messages and are ignored."""

    ANY: ClassVar[_Any] = ANY
    """The wildcard of `match` patterns (Elixir's ``:_``)."""

    def __init__(self) -> None:
        self._alive = False
        self._unique = True
        # unique: key -> (pid, value); duplicate: key -> {pid: [value, ...]}
        self._table: dict[Hashable, Any] = {}
        # pid -> its keys, in registration order. A pid's entry stays while it lives,
        # even with no keys: its exit hook is added once, at its first registration.
        self._by_pid: dict[Pid, dict[Hashable, None]] = {}
        self._linked: set[Pid] = set()  # the links this registry made (and may undo)
        self._count = 0
        self._meta: dict[Hashable, Any] = {}
        self._exit_hook = _exit_hook_for(self)

    def __repr__(self) -> str:
        pid = getattr(self, "_pid", None)
        kind = "unique" if self._unique else "duplicate"
        return f"<Registry {kind} {pid!r} entries={self._count}>"

    async def init(self, keys: Keys, *, meta: Mapping[Hashable, Any] | None = None) -> None:
        """Set up an empty registry with ``keys="unique"`` or ``keys="duplicate"``."""
        if keys not in ("unique", "duplicate"):
            raise ValueError(f"Registry keys must be 'unique' or 'duplicate', not {keys!r}")
        self._unique = keys == "unique"
        self._meta = dict(meta or {})
        self._alive = True
        self._pid._add_exit_hook(self._registry_exited)

    async def handle_info(self, message: Any) -> NoReply | Stop | None:
        """Ignore the exit signals of registered processes: their entries are already gone."""
        if type(message) is ExitSignal:
            return None
        return await super().handle_info(message)

    @classmethod
    async def start_link(  # type: ignore[override]  # keys is required, as in Elixir
        cls,
        keys: Keys,
        *,
        name: Name | None = None,
        nursery: trio.Nursery | None = None,
        meta: Mapping[Hashable, Any] | None = None,
    ) -> Pid:
        """Start a registry linked to the calling process.

        Args:
            keys: ``"unique"`` (a key points to at most one process) or ``"duplicate"``.
            name: a name for the registry process (a str or `via`); other functions
                accept the name, the pid, or the `Registry` object.
            nursery: where its task lives (required outside an otpy process).
            meta: initial metadata, read with `meta`.

        Raises:
            StartError: ``keys`` is neither ``"unique"`` nor ``"duplicate"``.
            AlreadyRegistered: ``name`` is taken.

        Example::

            await otpy.Registry.start_link(keys="duplicate", name="pubsub", nursery=nursery)
        """
        return await super().start_link(keys, name=name, nursery=nursery, meta=meta)

    # --- the ViaRegistry protocol -----------------------------------------------------

    def register_name(self, key: Hashable, pid: Pid) -> bool:
        """Register ``pid`` under ``key`` with the value ``None``; False if the key is taken.

        Part of the `ViaRegistry` protocol, which `via` names use. Call `register`
        instead.

        Example::

            registry = otpy.Registry.resolve("reg")
            await Worker.start_link(name=otpy.via(registry, "w1"), nursery=nursery)
        """
        return self._register_via(key, pid, None)

    def unregister_name(self, key: Hashable) -> None:
        """Remove the entry under ``key``, whoever holds it (`ViaRegistry` protocol).

        Example::

            otpy.Registry.resolve("reg").unregister_name("w1")
        """
        if not self._unique:
            raise ValueError("via is only supported for unique registries")
        entry = self._table.get(key)
        if entry is not None:
            self._unregister(entry[0], key)

    def whereis_name(self, key: Hashable) -> Pid | None:
        """The live process under ``key``, or None (`ViaRegistry` protocol).

        Example::

            assert otpy.Registry.resolve("reg").whereis_name("w1") is otpy.whereis(otpy.Registry.via("reg", "w1"))
        """
        if not self._unique:
            raise ValueError("via is only supported for unique registries")
        if not self._alive:
            return None
        entry = self._table.get(key)
        if entry is not None and entry[0].alive:
            pid: Pid = entry[0]
            return pid
        return None

    def _register_via(self, key: Hashable, pid: Pid, value: object) -> bool:
        if not self._unique:
            raise ValueError("via is only supported for unique registries")
        if not self._alive:
            raise NoProcess(self, "register_name")
        try:
            self._register(pid, key, value)
        except AlreadyRegistered:
            return False
        return True

    # --- the tables -------------------------------------------------------------------

    def _register(self, pid: Pid, key: Hashable, value: object) -> None:
        if not pid.alive:
            return
        table = self._table
        if self._unique:
            entry = table.get(key)
            if entry is not None:
                raise AlreadyRegistered(key, entry[0])
            table[key] = (pid, value)
        else:
            pids = table.get(key)
            if pids is None:
                table[key] = {pid: [value]}
            else:
                values = pids.get(pid)
                if values is None:
                    pids[pid] = [value]
                else:
                    values.append(value)
        self._count += 1
        keys = self._by_pid.get(pid)
        if keys is None:
            keys = self._by_pid[pid] = {}
            pid._add_exit_hook(self._exit_hook)
        if not keys:
            own = self._pid
            if pid is not own and (pid._links is None or own not in pid._links):
                link_pair(pid, own)
                self._linked.add(pid)
        keys[key] = None

    def _unregister(self, pid: Pid, key: Hashable) -> None:
        """Remove every entry of ``pid`` under ``key``."""
        keys = self._by_pid.get(pid)
        if keys is None or key not in keys:
            return
        del keys[key]
        table = self._table
        if self._unique:
            del table[key]
            self._count -= 1
        else:
            pids = table[key]
            self._count -= len(pids.pop(pid))
            if not pids:
                del table[key]
        if not keys and pid in self._linked:
            self._linked.discard(pid)
            _unlink_pair(pid, self._pid)

    def _pid_exited(self, pid: Pid) -> None:
        keys = self._by_pid.pop(pid, None)
        self._linked.discard(pid)
        if not keys:
            return
        table = self._table
        if self._unique:
            for key in keys:
                del table[key]
            self._count -= len(keys)
        else:
            for key in keys:
                pids = table[key]
                self._count -= len(pids.pop(pid))
                if not pids:
                    del table[key]

    def _registry_exited(self, _pid: Pid, _reason: object) -> None:
        # Like the ETS tables of an Elixir registry, the entries die with the process.
        self._alive = False
        self._table = {}
        self._by_pid = {}
        self._linked = set()
        self._count = 0
        self._meta = {}

    def _entries(self, key: Hashable) -> list[tuple[Pid, Any]]:
        entry = self._table.get(key)
        if entry is None:
            return []
        if self._unique:
            return [entry]
        return [(pid, value) for pid, values in entry.items() for value in values]

    def _all(self) -> Iterator[tuple[Any, Pid, Any]]:
        if self._unique:
            for key, (pid, value) in self._table.items():
                yield key, pid, value
        else:
            for key, pids in self._table.items():
                for pid, values in pids.items():
                    for value in values:
                        yield key, pid, value

    # --- the API ----------------------------------------------------------------------

    @staticmethod
    def resolve(registry: RegistryRef) -> Registry:
        """The `Registry` object behind a registry's name, pid, `via` name, or object.

        The object is the registry's process state (what ``otpy.get_state(pid)`` returns); the functions of
        this class accept it directly, which saves a name lookup, and `via` accepts it
        as a `ViaRegistry`. It is bound to one incarnation of the registry: once that
        process exits, using it raises `NoProcess`.

        Raises:
            NoProcess: no running registry by that name or pid.
            TypeError: the process is not a registry.

        Example::

            registry = otpy.Registry.resolve("reg")
            assert otpy.Registry.count(registry) == otpy.Registry.count("reg")
        """
        if isinstance(registry, Registry):
            if registry._alive:
                return registry
            raise NoProcess(registry, "registry")
        pid = resolve(registry)
        server = pid._server if pid is not None else None
        if isinstance(server, Registry):
            if server._alive:
                return server
        elif server is not None:
            raise TypeError(f"{registry!r} is a {type(server).__name__}, not a Registry")
        raise NoProcess(registry, "registry")

    @staticmethod
    def via(registry: RegistryRef, key: Hashable, value: object = None) -> Via:
        """A process name held by a unique ``registry`` under ``key`` (Elixir's ``{:via, Registry, ...}``).

        Use it wherever a name works. ``value`` is stored with the entry. A registry
        given by name is looked up each time the name is used, so the name follows the
        registry across restarts.

        Example::

            name = otpy.Registry.via("reg", "alice", value={"joined": 1})
            await Session.start_link(name=name, nursery=nursery)
            await otpy.call(name, "hello")
            assert otpy.Registry.lookup("reg", "alice")[0][1] == {"joined": 1}
        """
        return Via(_ViaRef(registry, value), key)

    @staticmethod
    def register(registry: RegistryRef, key: Hashable, value: object) -> None:
        """Register the calling process under ``key`` with ``value``.

        In a duplicate registry a process may register the same key many times (each
        registration is one entry). The calling process is linked to the registry.

        Raises:
            AlreadyRegistered: unique keys only: ``key`` is taken (``.pid`` holds it,
                possibly the caller itself).
            RuntimeError: called outside an otpy process.
            NoProcess: the registry is not running.

        Example::

            class Worker(otpy.GenServer):
                async def init(self, number):
                    otpy.Registry.register("reg", ("worker", number), {"started": trio.current_time()})
        """
        Registry.resolve(registry)._register(_self_pid(), key, value)

    @staticmethod
    def unregister(registry: RegistryRef, key: Hashable) -> None:
        """Remove all the calling process's entries under ``key`` (no-op if it has none).

        When the process has no key left, it is unlinked from the registry.

        Example::

            otpy.Registry.register("pubsub", "news", None)
            otpy.Registry.unregister("pubsub", "news")
            assert otpy.Registry.keys("pubsub", otpy.self()) == []
        """
        Registry.resolve(registry)._unregister(_self_pid(), key)

    @staticmethod
    def lookup(registry: RegistryRef, key: Hashable) -> list[tuple[Pid, Any]]:
        """The ``(pid, value)`` entries under ``key``, in no particular order (``[]`` if none).

        O(1) for a unique registry, O(entries under the key) for a duplicate one. Read
        "Registrations and staleness" in the class docs.

        Example::

            match otpy.Registry.lookup("reg", "alice"):
                case [(pid, value)]:
                    otpy.send(pid, "hello")
                case []:
                    print("alice is not here")
        """
        return Registry.resolve(registry)._entries(key)

    @staticmethod
    def match(registry: RegistryRef, key: Hashable, pattern: object) -> list[tuple[Pid, Any]]:
        """The ``(pid, value)`` entries under ``key`` whose value matches ``pattern``.

        A pattern is Elixir's match pattern, in Python:

        - `Registry.ANY` matches anything (Elixir's ``:_``);
        - a tuple or a list matches a tuple (list) of the same length, element by element;
        - a dict matches a mapping that has all its keys, with matching values;
        - a class matches its instances;
        - any other callable is a predicate, called with the value (Elixir's guards);
        - anything else matches an equal value.

        Example::

            otpy.Registry.register("reg", "hello", (1, "atom", 1))
            otpy.Registry.register("reg", "hello", (2, "atom", 2))
            ANY = otpy.Registry.ANY
            assert otpy.Registry.match("reg", "hello", (1, ANY, ANY)) == [(me, (1, "atom", 1))]
            assert len(otpy.Registry.match("reg", "hello", (ANY, str, lambda n: n > 0))) == 2
        """
        return [entry for entry in Registry.resolve(registry)._entries(key) if _matches(pattern, entry[1])]

    @staticmethod
    def count_match(registry: RegistryRef, key: Hashable, pattern: object) -> int:
        """How many entries under ``key`` match ``pattern`` (see `match`).

        Example::

            admins = otpy.Registry.count_match("reg", "users", {"role": "admin"})
        """
        return sum(1 for entry in Registry.resolve(registry)._entries(key) if _matches(pattern, entry[1]))

    @staticmethod
    def unregister_match(registry: RegistryRef, key: Hashable, pattern: object) -> None:
        """Remove the calling process's entries under ``key`` whose value matches ``pattern``.

        Example::

            otpy.Registry.register("reg", "hello", "world_a")
            otpy.Registry.register("reg", "hello", "world_b")
            otpy.Registry.unregister_match("reg", "hello", "world_a")
            assert otpy.Registry.values("reg", "hello", otpy.self()) == ["world_b"]
        """
        table = Registry.resolve(registry)
        pid = _self_pid()
        entry = table._table.get(key)
        if entry is None:
            return
        if table._unique:
            if entry[0] is pid and _matches(pattern, entry[1]):
                table._unregister(pid, key)
            return
        values = entry.get(pid)
        if values is None:
            return
        kept = [value for value in values if not _matches(pattern, value)]
        if not kept:
            table._unregister(pid, key)
        else:
            table._count -= len(values) - len(kept)
            entry[pid] = kept

    @staticmethod
    def keys(registry: RegistryRef, pid: Pid) -> list[Any]:
        """The keys ``pid`` holds in ``registry`` (``[]`` if none, or if it has exited).

        In a duplicate registry a key appears once per entry.

        Example::

            assert otpy.Registry.keys("reg", otpy.self()) == ["alice"]
        """
        table = Registry.resolve(registry)
        keys = table._by_pid.get(pid)
        if not keys:
            return []
        if table._unique:
            return list(keys)
        return [key for key in keys for _ in table._table[key][pid]]

    @staticmethod
    def values(registry: RegistryRef, key: Hashable, pid: Pid) -> list[Any]:
        """The values ``pid`` registered under ``key`` (at most one in a unique registry).

        Example::

            otpy.Registry.register("reg", "hello", "world")
            assert otpy.Registry.values("reg", "hello", otpy.self()) == ["world"]
        """
        table = Registry.resolve(registry)
        entry = table._table.get(key)
        if entry is None:
            return []
        if table._unique:
            return [entry[1]] if entry[0] is pid else []
        return list(entry.get(pid, ()))

    @staticmethod
    def count(registry: RegistryRef) -> int:
        """The number of entries in the registry, in O(1).

        Example::

            assert otpy.Registry.count("reg") == 0
        """
        return Registry.resolve(registry)._count

    @staticmethod
    def select(
        registry: RegistryRef, predicate: Callable[[Any, Pid, Any], object] | None = None
    ) -> list[tuple[Any, Pid, Any]]:
        """The ``(key, pid, value)`` entries for which ``predicate(key, pid, value)`` is true.

        Elixir's ``select`` with a match spec; here a plain predicate, and you shape the
        result yourself. Without a predicate, every entry. It visits every entry: O(n).

        Example::

            rooms = [key[1] for key, _, _ in otpy.Registry.select("reg", lambda key, pid, value: key[0] == "room")]
        """
        entries = list(Registry.resolve(registry)._all())  # a snapshot: the predicate may change the registry
        if predicate is None:
            return entries
        return [entry for entry in entries if predicate(*entry)]

    @staticmethod
    def count_select(registry: RegistryRef, predicate: Callable[[Any, Pid, Any], object]) -> int:
        """How many entries `select` would return for ``predicate``.

        Example::

            mine = otpy.Registry.count_select("reg", lambda key, pid, value: pid is otpy.self())
        """
        return sum(1 for entry in list(Registry.resolve(registry)._all()) if predicate(*entry))

    @staticmethod
    def dispatch(registry: RegistryRef, key: Hashable, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(entries, *args)`` with the ``(pid, value)`` entries under ``key``.

        ``fn`` runs in the calling task, synchronously, and only if there are entries.
        The registered processes take no part unless ``fn`` sends them something. An
        error in ``fn`` comes out of ``dispatch``. ``fn`` must be a plain function: it
        may `send` or `cast`, but not await.

        Raises:
            TypeError: ``fn`` is an async function.

        Example:
            A pub/sub broadcast::

                def broadcast(entries, message):
                    for pid, _ in entries:
                        otpy.send(pid, ("broadcast", message))

                otpy.Registry.dispatch("pubsub", "news", broadcast, "hello")
        """
        entries = Registry.resolve(registry)._entries(key)
        if entries:
            result = fn(entries, *args)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("Registry.dispatch takes a plain function; it cannot await")

    @staticmethod
    def update_value(registry: RegistryRef, key: Hashable, fn: Callable[[Any], Any]) -> tuple[Any, Any] | None:
        """Replace the calling process's value under ``key`` with ``fn(old)``; return ``(new, old)``.

        Returns ``None`` if the calling process does not hold ``key`` (Elixir's ``:error``).

        Raises:
            ValueError: the registry has duplicate keys.

        Example::

            otpy.Registry.register("reg", "hits", 1)
            assert otpy.Registry.update_value("reg", "hits", lambda n: n + 1) == (2, 1)
        """
        table = Registry.resolve(registry)
        if not table._unique:
            raise ValueError("Registry.update_value is only supported for unique registries")
        pid = _self_pid()
        entry = table._table.get(key)
        if entry is None or entry[0] is not pid:
            return None
        old = entry[1]
        new = fn(old)
        if table._table.get(key) is entry:  # fn may have unregistered it
            table._table[key] = (pid, new)
        return new, old

    @staticmethod
    def meta(registry: RegistryRef, key: Hashable, default: Any = None) -> Any:
        """Read the registry's metadata under ``key``, or ``default``.

        Example::

            await otpy.Registry.start_link(keys="unique", name="reg", meta={"shard": 3}, nursery=nursery)
            assert otpy.Registry.meta("reg", "shard") == 3
        """
        return Registry.resolve(registry)._meta.get(key, default)

    @staticmethod
    def put_meta(registry: RegistryRef, key: Hashable, value: Any) -> None:
        """Store metadata under ``key``.

        Example::

            otpy.Registry.put_meta("reg", "owner", "ops")
        """
        Registry.resolve(registry)._meta[key] = value

    @staticmethod
    def delete_meta(registry: RegistryRef, key: Hashable) -> None:
        """Delete the metadata under ``key`` (no-op if absent).

        Example::

            otpy.Registry.delete_meta("reg", "owner")
            assert otpy.Registry.meta("reg", "owner") is None
        """
        Registry.resolve(registry)._meta.pop(key, None)


RegistryRef: TypeAlias = "Registry | Pid | str | Via"


@attrs.frozen(repr=False)
class _ViaRef:
    """A `ViaRegistry` that finds its registry by name (or pid) each time it is used."""

    registry: RegistryRef
    value: object = attrs.field(default=None, eq=False)

    def __repr__(self) -> str:
        return f"<Registry {self.registry!r}>"

    def register_name(self, key: Hashable, pid: Pid) -> bool:
        return Registry.resolve(self.registry)._register_via(key, pid, self.value)

    def unregister_name(self, key: Hashable) -> None:
        try:
            registry = Registry.resolve(self.registry)
        except NoProcess:
            return
        registry.unregister_name(key)

    def whereis_name(self, key: Hashable) -> Pid | None:
        try:
            registry = Registry.resolve(self.registry)
        except NoProcess:
            return None
        return registry.whereis_name(key)


if TYPE_CHECKING:

    def _implements_via_registry(registry: Registry, ref: _ViaRef) -> tuple[ViaRegistry, ViaRegistry]:
        return registry, ref
