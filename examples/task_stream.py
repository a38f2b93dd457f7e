"""Task.async_stream: many jobs, a few at a time, each crash and timeout reported for its own item.

    python examples/task_stream.py

Ten simulated downloads run at most three at a time. Item 3 crashes and item 7 hangs
past its 0.5 s timeout: both are reported for their own item, and every other item
still arrives. It runs the stream three ways: ordered (results in input order),
unordered (as they finish), and under a `TaskSupervisor` with
``async_stream_nolink``. It takes about two seconds and exits with status 0.
"""

from __future__ import annotations

import logging

import structlog
import trio

import otpy

DELAYS = [0.20, 0.10, 0.30, 0.05, 0.15, 0.25, 0.10, 5.00, 0.05, 0.20]
running = 0
most = 0


async def download(n: int) -> str:
    """Pretend to download page ``n``; page 3 fails, page 7 hangs."""
    global running, most
    running += 1
    most = max(most, running)
    try:
        await trio.sleep(DELAYS[n])
        if n == 3:
            raise ConnectionError(f"page {n}: connection reset")
        return f"page {n} ({(n + 1) * 512} bytes)"
    finally:
        running -= 1


def show(start: float, n: int, result: otpy.TaskOk[str] | otpy.TaskExit) -> None:
    at = trio.current_time() - start
    match result:
        case otpy.TaskOk(value):
            print(f"  {at:4.2f}s  item {n}: ok    {value}")
        case otpy.TaskExit(reason):
            print(f"  {at:4.2f}s  item {n}: exit  {reason!r}")


async def main() -> None:
    global most
    async with trio.open_nursery() as nursery:
        print("ordered, max_concurrency=3, timeout=0.5:")
        start = trio.current_time()
        stream = otpy.Task.async_stream(range(10), download, max_concurrency=3, timeout=0.5, nursery=nursery)
        async with stream as results:
            n = 0
            async for result in results:
                show(start, n, result)
                n += 1
        print(f"  at most {most} downloads ran at once")

        print("unordered: results as they finish (the item is in the value):")
        most = 0
        start = trio.current_time()

        async def tagged(n: int) -> tuple[int, str]:
            return n, await download(n)

        stream2 = otpy.Task.async_stream(
            range(10), tagged, max_concurrency=3, ordered=False, timeout=0.5, nursery=nursery
        )
        async with stream2 as results2:
            async for result2 in results2:
                at = trio.current_time() - start
                if isinstance(result2, otpy.TaskOk):
                    print(f"  {at:4.2f}s  item {result2.value[0]}: ok")
                else:
                    print(f"  {at:4.2f}s  an item: exit  {result2.reason!r}")

        print("under a TaskSupervisor (async_stream_nolink):")
        tasks = await otpy.TaskSupervisor.start_link(name="tasks", nursery=nursery)
        start = trio.current_time()
        stream3 = otpy.TaskSupervisor.async_stream_nolink("tasks", range(5), download, max_concurrency=2, timeout=0.5)
        async with stream3 as results3:
            n = 0
            async for result in results3:
                show(start, n, result)
                n += 1
        await otpy.stop(tasks)
        print("done")


if __name__ == "__main__":
    # An application configures structlog; otpy never does. Silence the crash reports.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    trio.run(main)
