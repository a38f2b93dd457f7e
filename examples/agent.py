"""Agents: shared state without writing a GenServer.

    python examples/agent.py

A counter and a job queue, both Agents under one supervisor. The counter is killed
half-way: its supervisor restarts it, and its start function gives it a fresh state.
"""

from __future__ import annotations

import logging

import structlog
import trio

import otpy


def make_counter() -> int:
    print("  counter: starting at 0")
    return 0


async def worker(name: str) -> None:
    """Take jobs from the queue until it is empty; count each in the counter."""
    while True:
        job = await otpy.Agent.get_and_update("jobs", lambda jobs: (jobs[0], jobs[1:]) if jobs else (None, jobs))
        if job is None:
            return
        await trio.sleep(0.01)  # the work happens in the worker, not in the agent
        await otpy.Agent.update("counter", lambda n: n + 1)
        print(f"  {name} did {job}")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        children = [
            otpy.Agent.child_spec(make_counter, name="counter"),
            otpy.Agent.child_spec(lambda: [f"job-{n}" for n in range(6)], name="jobs", id="jobs"),
        ]
        sup = await otpy.Supervisor.start_link(children, nursery=nursery)

        async with trio.open_nursery() as workers:
            workers.start_soon(worker, "w1")
            workers.start_soon(worker, "w2")
        print("jobs done:", await otpy.Agent.get("counter", lambda n: n))

        otpy.Agent.cast("counter", lambda n: n + 100)
        print("after a cast of +100:", await otpy.Agent.get("counter", lambda n: n))

        counter = otpy.whereis("counter")
        assert counter is not None
        otpy.exit(counter, "kill")
        await counter.wait_exited()
        await trio.sleep(0.01)  # let the supervisor restart it
        print("after a kill and a restart:", await otpy.Agent.get("counter", lambda n: n))

        try:
            await otpy.Agent.get("counter", lambda n: n / 0)
        except otpy.ServerExited as exc:
            print("a function that raises crashes the agent:", type(exc.reason).__name__)

        await otpy.stop(sup)
        nursery.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    # An application configures structlog; otpy never does. Show errors only... none expected
    # except the deliberate crash above, so keep this one quiet too.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    trio.run(main)
