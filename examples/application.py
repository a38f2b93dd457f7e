"""otpy.run: a program whose main is a supervision tree, stopped in order by a signal.

    python examples/application.py

Three workers start in order. After a second, the program sends itself SIGTERM (as
a service manager would): the tree stops in reverse start order, each worker's
``terminate`` runs, and the program exits with status 0.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import structlog

import otpy


class Worker(otpy.GenServer):
    """Says when it starts and when it stops."""

    trap_exit = True  # so that terminate runs when the supervisor shuts it down

    async def init(self, label: str) -> otpy.NoReply:
        self.label = label
        print(f"{label}: started", flush=True)
        return otpy.NoReply(timeout=1.0) if label == "scheduler" else otpy.NoReply()

    async def handle_info(self, message: Any) -> None:
        if message is otpy.TIMEOUT:
            print(f"{self.label}: asking the operating system to stop us (SIGTERM)", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

    async def terminate(self, reason: object) -> None:
        print(f"{self.label}: stopping ({reason!r})", flush=True)


if __name__ == "__main__":
    # The application decides what otpy reports: info and above (start and stop, not progress).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    otpy.run(
        [
            Worker.child_spec("database", name="database"),
            Worker.child_spec("cache", name="cache"),
            Worker.child_spec("scheduler", name="scheduler"),
        ],
        strategy="rest_for_one",
    )
    print("the tree has stopped; exiting with status 0", flush=True)
