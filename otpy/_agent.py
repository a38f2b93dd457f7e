"""Agent: a process that holds one state, read and changed by functions (Elixir's ``Agent``)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import attrs
import trio

from ._gen_server import GenServer, NoReply, Stop
from ._gen_server import stop as _stop
from ._process import From, Name, Pid, Server, call, cast

R = TypeVar("R")


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)``; await the result if ``fn`` is an async function."""
    result = fn(*args, **kwargs)
    if inspect.iscoroutine(result):
        return await result
    return result


@attrs.frozen
class _Get:
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@attrs.frozen
class _Update:
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@attrs.frozen
class _GetAndUpdate:
    fn: Callable[..., Any]
    args: tuple[Any, ...]


class Agent(GenServer):
    """A process that holds a state, read and changed by the functions you send it.

    Agents are a simple abstraction around state: when all a process has to do is keep
    a value that several tasks read and update, an Agent saves you writing a GenServer.
    The functions run *inside* the agent, one at a time, so every update sees the state
    the previous one left.

    Example:
        A counter, with its client API in plain functions::

            async def start_counter(nursery):
                return await otpy.Agent.start_link(lambda: 0, name="counter", nursery=nursery)

            async def value():
                return await otpy.Agent.get("counter", lambda count: count)

            async def increment():
                await otpy.Agent.update("counter", lambda count: count + 1)

            async def main():
                async with trio.open_nursery() as nursery:
                    await start_counter(nursery)
                    await increment()
                    assert await value() == 1
                    await otpy.Agent.stop("counter")

            trio.run(main)

        Every function takes the state first, then the extra positional arguments (the
        ``fn, *args`` form stands for Elixir's ``module, function, args``)::

            await otpy.Agent.update("counter", operator.add, 10)

        Functions may be plain or async.

    How to supervise:
        ``Agent.child_spec(fn, *args, name=...)`` starts an agent under a supervisor;
        the restarted agent runs ``fn`` again for a fresh state::

            children = [otpy.Agent.child_spec(dict, name="cache")]
            await otpy.Supervisor.start_link(children, nursery=nursery)

    Client and server:
        The function runs in the agent, the caller waits. Expensive work inside the
        function blocks the agent and every other caller::

            # the agent computes: every other caller waits
            await otpy.Agent.get(agent, lambda state: expensive(state))
            # the caller computes: the agent only hands over its state
            expensive(await otpy.Agent.get(agent, lambda state: state))

        Do the second unless the work must be serialised with updates. A function that
        raises crashes the agent (the caller gets `ServerExited` with the exception),
        as in Elixir.

    When not to use:
        When the state needs behaviour of its own — timeouts, messages, monitors — write
        a `GenServer`. Note that the state is shared by reference: a mutable state
        returned by `get` can be changed behind the agent's back, so return copies or
        immutable values.
    """

    state: Any

    async def init(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` (awaited if async); its result is the initial state."""
        self.state = await _run(fn, *args, **kwargs)

    async def handle_call(self, request: Any, from_: From) -> Any:
        """Run a `get`, `update` or `get_and_update` function against the state."""
        kind = type(request)
        if kind is _Get:
            return await _run(request.fn, self.state, *request.args)
        if kind is _Update:
            self.state = await _run(request.fn, self.state, *request.args)
            return None
        if kind is _GetAndUpdate:
            result = await _run(request.fn, self.state, *request.args)
            if type(result) is not tuple or len(result) != 2:
                return Stop(("bad_return_value", result))
            reply, self.state = result
            return reply
        return await super().handle_call(request, from_)

    async def handle_cast(self, request: Any) -> NoReply | Stop | None:
        """Run a `cast` function: its result is the new state."""
        if type(request) is _Update:
            self.state = await _run(request.fn, self.state, *request.args)
            return None
        return await super().handle_cast(request)

    @classmethod
    async def start_link(  # type: ignore[override]  # narrower on purpose: an agent needs fn
        cls,
        fn: Callable[..., Any],
        *args: Any,
        name: Name | None = None,
        nursery: trio.Nursery | None = None,
        **kwargs: Any,
    ) -> Pid:
        """Start an agent linked to the calling process, with ``fn(*args, **kwargs)`` as its state.

        ``fn`` runs in the new process before ``start_link`` returns; it may be plain or
        async. ``name`` registers the agent (a str or `via`); ``nursery`` is where its
        task lives (required outside an otpy process).

        Raises:
            StartError: ``fn`` raised; ``reason`` is the exception.
            AlreadyRegistered: ``name`` is taken by a live process.

        Example::

            agent = await otpy.Agent.start_link(dict, name="cache", nursery=nursery)
            await otpy.Agent.update("cache", lambda cache: {**cache, "a": 1})
        """
        return await super().start_link(fn, *args, name=name, nursery=nursery, **kwargs)

    @overload
    @staticmethod
    async def get(agent: Server, fn: Callable[..., Awaitable[R]], *args: Any, timeout: float = ...) -> R: ...  # noqa: ASYNC109
    @overload
    @staticmethod
    async def get(agent: Server, fn: Callable[..., R], *args: Any, timeout: float = ...) -> R: ...  # noqa: ASYNC109

    @staticmethod
    async def get(agent: Server, fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> Any:  # noqa: ASYNC109 (OTP's call timeout)
        """Return ``fn(state, *args)``, computed inside the agent (Elixir's ``Agent.get``).

        Raises:
            NoProcess: no such agent.
            CallTimeout: no answer within ``timeout`` seconds.
            ServerExited: the agent exited first (``fn`` raised, for example).

        Example::

            count = await otpy.Agent.get("counter", lambda count: count)
            first = await otpy.Agent.get(agent, operator.getitem, 0)
        """
        return await call(agent, _Get(fn, args), timeout)

    @staticmethod
    async def update(agent: Server, fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (OTP's call timeout)
        """Replace the state with ``fn(state, *args)`` and wait until it is done (``Agent.update``).

        Raises:
            NoProcess: no such agent.
            CallTimeout: no answer within ``timeout`` seconds; the update may still happen.
            ServerExited: the agent exited first (``fn`` raised, for example).

        Example::

            await otpy.Agent.update("counter", lambda count: count + 1)
        """
        await call(agent, _Update(fn, args), timeout)

    @overload
    @staticmethod
    async def get_and_update(
        agent: Server,
        fn: Callable[..., Awaitable[tuple[R, Any]]],
        *args: Any,
        timeout: float = ...,  # noqa: ASYNC109
    ) -> R: ...
    @overload
    @staticmethod
    async def get_and_update(
        agent: Server,
        fn: Callable[..., tuple[R, Any]],
        *args: Any,
        timeout: float = ...,  # noqa: ASYNC109
    ) -> R: ...

    @staticmethod
    async def get_and_update(agent: Server, fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> Any:  # noqa: ASYNC109 (OTP's call timeout)
        """Run ``fn(state, *args)``, which returns ``(reply, new_state)``; return ``reply``.

        Elixir's ``Agent.get_and_update``: read and change the state in one step, with
        no other update in between. If ``fn`` returns anything but a 2-tuple, the agent
        stops with ``("bad_return_value", result)`` and the caller gets `ServerExited`.

        Raises:
            NoProcess: no such agent.
            CallTimeout: no answer within ``timeout`` seconds.
            ServerExited: the agent exited first (``fn`` raised or returned no pair).

        Example::

            # pop the first job of a queue held by the agent
            job = await otpy.Agent.get_and_update("jobs", lambda jobs: (jobs[0], jobs[1:]))
        """
        return await call(agent, _GetAndUpdate(fn, args), timeout)

    @staticmethod
    def cast(agent: Server, fn: Callable[..., Any], *args: Any) -> None:
        """Replace the state with ``fn(state, *args)`` without waiting (Elixir's ``Agent.cast``).

        Like every cast, it returns at once, and does nothing if the agent does not exist.

        Example::

            otpy.Agent.cast("counter", lambda count: count + 1)
        """
        cast(agent, _Update(fn, args))

    @staticmethod
    async def stop(agent: Server, reason: object = "normal", timeout: float = math.inf) -> None:  # noqa: ASYNC109 (OTP's stop timeout)
        """Stop the agent with ``reason`` and wait until it has exited (Elixir's ``Agent.stop``).

        Functions already sent to the agent run first.

        Raises:
            NoProcess: no such agent.
            CallTimeout: it had not exited within ``timeout``.

        Example::

            await otpy.Agent.stop("counter")
        """
        await _stop(agent, reason, timeout)
