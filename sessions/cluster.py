"""Run one node of a sessions cluster from the command line: ``python -m sessions.cluster``.

::

    export OTPY_CLUSTER_TOKEN=...            # the cluster's shared secret (never on the command line)
    python -m sessions.cluster --factory myapp.agents:session_options \\
        --dsn postgresql://postgres@127.0.0.1/app --schema agents --lease-ttl 3

``--factory`` names the ``session_factory`` (``module:function``, or ``path/to/file.py:function``):
``function(session_id) -> dict`` of `sessions.SessionServer` options. Once the node
serves, one JSON line goes to stdout: ``{"node_id": ..., "address": ...}``. SIGTERM or
SIGINT stops the node cleanly (its sessions are handed over); the exit status is 0 then,
3 when the node stopped because its store fenced it. ``--log-file`` sends the structlog
events there, one JSON object a line (default: stderr).

Example::

    proc = subprocess.Popen([sys.executable, "-m", "sessions.cluster", "--factory", "agents.py:options"],
                            stdout=subprocess.PIPE, env={**os.environ, "OTPY_CLUSTER_TOKEN": token})
    ready = json.loads(proc.stdout.readline())
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog
import trio

from ._cluster._node import ClusterNode, serve_node


def load_factory(spec: str) -> Any:
    """The callable that ``module:function`` or ``path/to/file.py:function`` names.

    Example::

        options = load_factory("myapp.agents:session_options")
    """
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise SystemExit(f"--factory {spec!r}: expected module:function or path/to/file.py:function")
    if where.endswith(".py"):
        path = Path(where).resolve()
        loaded = importlib.util.spec_from_file_location(f"_cluster_factory_{path.stem}", path)
        if loaded is None or loaded.loader is None:
            raise SystemExit(f"--factory {spec!r}: cannot load {path}")
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, attribute)


def _configure_logging(stream: TextIO) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(default=repr),
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the node until it stops, return the exit status.

    Example::

        sys.exit(sessions.cluster.main(["--factory", "agents.py:options", "--lease-ttl", "1"]))
    """
    from . import PostgresStore

    parser = argparse.ArgumentParser(prog="python -m sessions.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--factory", required=True, help="module:function or file.py:function (session_id -> options)")
    parser.add_argument("--dsn", default=None, help="libpq DSN (default: OTPY_POSTGRES_DSN, then the local server)")
    parser.add_argument("--schema", default="otpy_sessions")
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--advertise", default=None, help="the base URL other nodes use (default: the bound one)")
    parser.add_argument("--idle-timeout", type=float, default=300.0, help="seconds; 0 for never")
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args(argv)
    token = os.environ.get("OTPY_CLUSTER_TOKEN", "")
    if len(token) < 16:
        parser.error("set OTPY_CLUSTER_TOKEN to the cluster's shared secret (at least 16 characters)")
    factory = load_factory(args.factory)
    log = open(args.log_file, "a", buffering=1, encoding="utf-8") if args.log_file else sys.stderr  # noqa: SIM115
    _configure_logging(log)
    store = PostgresStore(
        args.dsn, schema=args.schema, node_id=args.node_id, cluster=args.cluster, lease_ttl=args.lease_ttl
    )

    def ready(node: ClusterNode) -> None:
        print(json.dumps({"node_id": node.node_id, "address": node.address}), flush=True)

    idle = args.idle_timeout if args.idle_timeout > 0 else math.inf
    reason = trio.run(
        functools.partial(
            serve_node,
            store,
            factory,
            token=token,
            ready=ready,
            host=args.host,
            port=args.port,
            advertise=args.advertise,
            idle_timeout=idle,
        )
    )
    return 0 if reason == "stopped" else 3


if __name__ == "__main__":
    sys.exit(main())
