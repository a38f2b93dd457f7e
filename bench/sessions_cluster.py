"""A sessions cluster on PostgreSQL, measured: durable turns/s on one node and on three,
the latency a call routed to another node adds, failover time, activation and
passivation cost, and what passivated sessions cost a node and the database.

Run it from the repository root::

    python bench/sessions_cluster.py                # the full run (about 6 minutes here)
    python bench/sessions_cluster.py --quick        # a smoke run: 2 nodes, tiny sizes, 1 kill, lease_ttl 1 s
    python bench/sessions_cluster.py --json out.json

Every node is an OS process: this script started again as ``--worker``, which runs a
`sessions.ClusterNode` (scripted provider, no delay: a turn costs what the server, the
store and the cluster cost) and takes commands on stdin, so the measured calls are made
inside a node, by name, as an application's code makes them. The nodes share one
PostgreSQL (``--dsn``, else ``OTPY_POSTGRES_DSN``, else the local server) in a schema of
their own (dropped at the end unless ``--schema`` names one). Without a reachable
PostgreSQL the script says why and exits 0.

What each figure is:

- *durable turns/s*: ``--sessions`` sessions (100), each running ``--turns`` turns one
  after the other, all at once, by name through `SessionServer.send_message` (a turn is
  acknowledged once its records are committed); one node, then the same number of
  sessions spread over ``--nodes`` nodes (3; each runs its own share), timed from the first
  start to the last end.
- *routed call*: from node a, sequential calls to a session a runs and to one b runs:
  ``status`` (a read) and ``send_message`` (a durable turn); median and p99, and their
  difference.
- *failover*: a session activated on a victim node that is SIGKILLed; the clock runs
  from the kill until a ``status`` call through a surviving node (polled) answers, the
  session then live on that node; ``--kills`` times (the victim restarted in between),
  with the nodes' ``--lease-ttl`` (3 s, the default).
- *activation / passivation*: sessions with ``--history`` turns each are passivated
  (`SessionServer.stop` by name: the lease released inactive) and called again (a
  ``status`` that activates it: claim, load, fold); each timed, minus a live ``status``.
- *passivated sessions*: ``--held`` sessions created through a node (a turn, then
  passivated), timed; the node's RSS before and after, the database's rows and bytes. Then
  the database is filled up to ``--fill`` (100,000) passivated sessions by copying those
  rows in SQL (not through a node: said so in the output), and the node's RSS, the cost of
  its orphan scan and the reactivation of random sessions among them are measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure the working tree's sessions


# --- the worker: one node, driven through stdin ----------------------------------------------


def _options(session_id: str) -> dict[str, Any]:
    import sessions

    def reply(request: sessions.TurnRequest) -> sessions.ScriptedReply:
        return sessions.ScriptedReply(f"{session_id} turn {request.turn}: {request.prompt}", cost_usd=0.001)

    return {"provider": sessions.ScriptedProvider(default=reply), "close_timeout": 2.0}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _summary_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def worker(args: argparse.Namespace) -> int:
    import structlog
    import trio

    import sessions
    from sessions import SessionServer

    structlog.configure(
        processors=[structlog.processors.JSONRenderer(default=repr)],
        logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
        cache_logger_on_first_use=True,
    )
    token = os.environ["OTPY_CLUSTER_TOKEN"]

    async def run_turns(names: list[str], turns: int) -> dict[str, Any]:
        latencies: list[float] = []

        async def one(name: str) -> None:
            for number in range(turns):
                started = time.perf_counter()
                await SessionServer.send_message(name, f"t{number}")
                latencies.append(time.perf_counter() - started)

        start_wall = time.time()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        elapsed = time.perf_counter() - start
        return {"start": start_wall, "end": start_wall + elapsed, "turns": len(latencies), **_summary_ms(latencies)}

    async def timed_calls(name: str, what: str, n: int) -> list[float]:
        took = []
        for number in range(n):
            started = time.perf_counter()
            if what == "status":
                await SessionServer.status(name)
            else:
                await SessionServer.send_message(name, f"lat{number}")
            took.append(time.perf_counter() - started)
        return took

    async def create(names: list[str], turns: int, concurrency: int) -> dict[str, Any]:
        limiter = trio.CapacityLimiter(concurrency)

        async def one(name: str) -> None:
            async with limiter:
                for number in range(turns):
                    await SessionServer.send_message(name, f"c{number}")
                await SessionServer.stop(name)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        return {"elapsed": time.perf_counter() - start, "created": len(names)}

    async def cycle(names: list[str]) -> dict[str, Any]:
        """Passivate then reactivate each (live beforehand), timing each step."""
        live = await timed_calls(names[0], "status", 50)
        stops, starts = [], []
        for name in names:
            started = time.perf_counter()
            await SessionServer.stop(name)
            stops.append(time.perf_counter() - started)
        for name in names:
            started = time.perf_counter()
            await SessionServer.status(name)
            starts.append(time.perf_counter() - started)
        return {"live_status": _summary_ms(live), "passivate": _summary_ms(stops), "activate": _summary_ms(starts)}

    async def handle(node: Any, command: dict[str, Any]) -> Any:
        match command["op"]:
            case "turns":
                return await run_turns(command["names"], command["turns"])
            case "calls":
                return _summary_ms(await timed_calls(command["name"], command["what"], command["n"]))
            case "create":
                return await create(command["names"], command["turns"], command.get("concurrency", 32))
            case "cycle":
                return await cycle(command["names"])
            case "orphans":
                took = []
                for _ in range(command["n"]):
                    started = time.perf_counter()
                    await node.store.orphans(limit=256)
                    took.append(time.perf_counter() - started)
                return _summary_ms(took)
            case "mem":
                await trio.sleep(command.get("settle", 0))
                return {"rss_mb": _rss_mb(), "local": len(node._local())}
        raise ValueError(command)

    async def main() -> None:
        store = sessions.PostgresStore(args.dsn, schema=args.schema, node_id=args.node_id, lease_ttl=args.lease_ttl)
        async with sessions.ClusterNode.open(store, _options, token=token, idle_timeout=math.inf) as node:
            print(json.dumps({"node_id": node.node_id, "address": node.address, "rss_mb": _rss_mb()}), flush=True)
            stdin = trio.wrap_file(sys.stdin)
            while True:
                line = await stdin.readline()
                if not line or not line.strip():
                    break
                command = json.loads(line)
                if command["op"] == "quit":
                    break
                try:
                    reply = {"ok": await handle(node, command)}
                except Exception as exc:
                    reply = {"error": repr(exc)}
                print(json.dumps(reply), flush=True)

    trio.run(main)
    return 0


# --- the driver -------------------------------------------------------------------------------


class Worker:
    """A node process of this bench."""

    def __init__(self, bench: Bench, node_id: str) -> None:
        self.bench = bench
        self.node_id = node_id
        command = [sys.executable, __file__, "--worker", "--node-id", node_id, "--dsn", bench.dsn]
        command += ["--schema", bench.schema, "--lease-ttl", str(bench.lease_ttl)]
        env = {**os.environ, "OTPY_CLUSTER_TOKEN": bench.token}
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        self.address = ""
        self.rss_mb = math.nan

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"node {self.node_id} did not start (exit {self.proc.wait()})")
        info = json.loads(line)
        self.address, self.rss_mb = info["address"], info["rss_mb"]

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"node {self.node_id} exited ({self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise SystemExit(f"node {self.node_id}: {reply['error']}")
        return reply["ok"]

    def do(self, **command: Any) -> Any:
        self.send(**command)
        return self.receive()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def kill(self) -> float:
        self.proc.kill()
        killed = time.monotonic()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        return killed


class Bench:
    def __init__(self, dsn: str, schema: str, lease_ttl: float) -> None:
        self.dsn = dsn
        self.schema = schema
        self.lease_ttl = lease_ttl
        self.token = secrets.token_urlsafe(24)
        self.workers: list[Worker] = []
        self.settle = 2 * lease_ttl  # seconds a node runs (scans, reaps) before its memory is read

    def start(self, *node_ids: str) -> list[Worker]:
        started = [Worker(self, node_id) for node_id in node_ids]
        for worker in started:
            worker.ready()
        self.workers.extend(started)
        return started

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("{s}", f'"{self.schema}"'), params or None)
            return cursor.fetchall() if cursor.description is not None else []

    def db_size(self) -> dict[str, Any]:
        rows = self.query(
            "SELECT (SELECT count(*) FROM {s}.records), (SELECT count(*) FROM {s}.leases),"
            " (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            "  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r')",
            self.schema,
        )[0]
        return {"records": int(rows[0]), "leases": int(rows[1]), "bytes": int(rows[2])}

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()


def turns_per_s(runs: list[dict[str, Any]]) -> float:
    turns = sum(run["turns"] for run in runs)
    elapsed = float(max(run["end"] for run in runs)) - float(min(run["start"] for run in runs))
    return float(turns) / elapsed


def measure_turns(bench: Bench, workers: list[Worker], prefix: str, n_sessions: int, turns: int) -> dict[str, Any]:
    """Durable turns/s of ``n_sessions`` sessions spread over ``workers`` (each runs its share)."""
    shares = [[f"{prefix}-{i}" for i in range(n_sessions) if i % len(workers) == k] for k in range(len(workers))]
    for worker, names in zip(workers, shares, strict=True):
        worker.send(op="turns", names=names, turns=1)  # untimed: activation, a first turn
    for worker in workers:
        worker.receive()
    for worker, names in zip(workers, shares, strict=True):
        worker.send(op="turns", names=names, turns=turns)
    runs = [worker.receive() for worker in workers]
    return {
        "turns_per_s": turns_per_s(runs),
        "turns": sum(run["turns"] for run in runs),
        "p50_ms": statistics.median(run["median_ms"] for run in runs),
        "p99_ms": max(run["p99_ms"] for run in runs),
    }


def measure_failover(bench: Bench, survivor: Worker, kills: int) -> dict[str, Any]:
    """SIGKILL a victim node that runs a session, time until it answers through ``survivor``."""
    import httpx

    took: list[float] = []
    client = httpx.Client(headers={"authorization": f"Bearer {bench.token}"})
    try:
        for round_ in range(kills):
            (victim,) = bench.start(f"victim{round_}")  # a fresh node id: nothing of an earlier one comes back
            name = f"fo-{round_}"
            victim.do(op="turns", names=[name], turns=1)  # activated on the victim
            owner = bench.query("SELECT node_id FROM {s}.leases WHERE session_id = %s", name)[0][0]
            assert owner == victim.node_id, owner
            killed = victim.kill()
            bench.workers.remove(victim)
            body = {"request": {"op": "get", "what": "status"}, "timeout": None}
            while True:
                try:
                    response = client.post(f"{survivor.address}/v1/call/{name}", json=body, timeout=2.0)
                    if response.status_code == 200 and response.json().get("type") == "status":
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            took.append(time.monotonic() - killed)
            print(f"  kill {round_ + 1}: {took[-1]:.2f} s", file=sys.stderr, flush=True)
    finally:
        client.close()
    return {
        "kills": kills,
        "median_s": statistics.median(took),
        "max_s": max(took),
        "min_s": min(took),
        "lease_ttl": bench.lease_ttl,
    }


def measure_held(bench: Bench, node: Worker, held: int, fill: int) -> dict[str, Any]:
    names = [f"held-{i}" for i in range(held)]
    before = node.do(op="mem", settle=0)
    created = node.do(op="create", names=names, turns=1, concurrency=32)
    after = node.do(op="mem", settle=bench.settle)
    db = bench.db_size()
    result: dict[str, Any] = {
        "created": held,
        "create_per_s": held / created["elapsed"],
        "rss_before_mb": before["rss_mb"],
        "rss_after_mb": after["rss_mb"],
        "live_after": after["local"],
        "db": db,
        "orphan_scan_small": node.do(op="orphans", n=20),
    }
    if fill > held:
        # Copy the created sessions' rows until `fill` sessions exist: records and released,
        # inactive leases, as passivation leaves them.
        bench.query(
            "INSERT INTO {s}.records (session_id, seq, v, ts, kind, data)"
            " SELECT 'fill-' || g, r.seq, r.v, r.ts, r.kind, r.data"
            " FROM generate_series(0, %s) g, {s}.records r WHERE r.session_id = 'held-0'",
            fill - held - 1,
        )
        bench.query(
            "INSERT INTO {s}.leases (session_id, node_id, epoch, active, updated_at)"
            " SELECT 'fill-' || g, NULL, 1, false, now() FROM generate_series(0, %s) g",
            fill - held - 1,
        )
        bench.query("ANALYZE {s}.records")
        bench.query("ANALYZE {s}.leases")
        result["filled_to"] = fill
        result["db_filled"] = bench.db_size()
        result["orphan_scan_filled"] = node.do(op="orphans", n=20)
        sample = random.Random(0).sample(range(fill - held), min(50, fill - held))
        result["reactivate_filled"] = node.do(op="cycle", names=[f"fill-{i}" for i in sample])["activate"]
        result["rss_filled_mb"] = node.do(op="mem", settle=bench.settle)["rss_mb"]
    return result


def _reachable(dsn: str) -> str | None:
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("OTPY_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--schema", default=None, help="default: a fresh one, dropped at the end")
    parser.add_argument("--nodes", type=int, default=3, help="nodes of the many-node turns/s (at least 2)")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=20, help="timed turns per session")
    parser.add_argument("--calls", type=int, default=300, help="calls per routed-latency series")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--cycle", type=int, default=100, help="sessions passivated and reactivated")
    parser.add_argument("--history", type=int, default=10, help="turns of each of those sessions")
    parser.add_argument("--held", type=int, default=2000, help="sessions created through a node then passivated")
    parser.add_argument("--fill", type=int, default=100_000, help="passivated sessions in the database in all")
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 nodes, tiny sizes, 1 kill, lease_ttl 1 s")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.nodes, args.sessions, args.turns, args.calls, args.kills = 2, 6, 3, 10, 1
        args.cycle, args.history, args.held, args.fill, args.lease_ttl = 3, 2, 10, 30, 1.0
    why = _reachable(args.dsn)
    if why is not None:
        print(f"skipped: PostgreSQL not reachable at {args.dsn}: {why}")
        return 0
    own_schema = args.schema is None
    schema = args.schema or f"otpy_bench_{secrets.token_hex(6)}"
    bench = Bench(args.dsn, schema, args.lease_ttl)
    if args.quick:
        bench.settle = 0.1
    results: dict[str, Any] = {"machine": _machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        nodes = bench.start(*"abcdefgh"[: max(2, args.nodes)])
        a, b, last = nodes[0], nodes[1], nodes[-1]
        results["rss_idle_mb"] = a.rss_mb
        print("durable turns/s ...", file=sys.stderr, flush=True)
        results["turns_1_node"] = measure_turns(bench, [a], "one", args.sessions, args.turns)
        results["turns_n_nodes"] = measure_turns(bench, nodes, "many", args.sessions, args.turns)
        results["turns_n_nodes"]["nodes"] = len(nodes)
        print("routed calls ...", file=sys.stderr, flush=True)
        a.do(op="turns", names=["lat-a"], turns=1)
        b.do(op="turns", names=["lat-b"], turns=1)
        routed: dict[str, Any] = {}
        for what in ("status", "send"):
            routed[what] = {
                "local": a.do(op="calls", name="lat-a", what=what, n=args.calls),
                "routed": a.do(op="calls", name="lat-b", what=what, n=args.calls),
            }
        results["routed"] = routed
        print("activation and passivation ...", file=sys.stderr, flush=True)
        names = [f"cyc-{i}" for i in range(args.cycle)]
        a.do(op="turns", names=names, turns=args.history)
        results["cycle"] = a.do(op="cycle", names=names)
        print("passivated sessions held ...", file=sys.stderr, flush=True)
        results["held"] = measure_held(bench, last, args.held, args.fill)
        print("failover ...", file=sys.stderr, flush=True)
        results["failover"] = measure_failover(bench, b, args.kills)
    finally:
        bench.close()
        if own_schema:
            bench.query(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    results["machine"]["load_avg_end"] = os.getloadavg()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _ms(summary: dict[str, float], digits: int = 1) -> str:
    return f"median {summary['median_ms']:.{digits}f} ms, p99 {summary['p99_ms']:.{digits}f} ms"


def report(r: dict[str, Any]) -> None:
    """Print the figures as a Markdown table."""
    rows: list[tuple[str, str]] = []
    for key in ("turns_1_node", "turns_n_nodes"):
        run = r[key]
        label = f"{run.get('nodes', 1)} node{'s' if run.get('nodes', 1) > 1 else ''}"
        rows.append(
            (
                f"durable turns/s, {label} ({run['turns']:,} turns)",
                f"{run['turns_per_s']:,.0f} (per turn p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms)",
            )
        )
    for what, label in (("status", "status (a read)"), ("send", "send_message (a durable turn)")):
        local, routed = r["routed"][what]["local"], r["routed"][what]["routed"]
        for stat in ("median_ms", "p99_ms"):
            added = routed[stat] - local[stat]
            rows.append(
                (
                    f"{label}, local / routed, {stat.removesuffix('_ms')}",
                    f"{local[stat]:.2f} / {routed[stat]:.2f} ms (+{added:.2f} ms)",
                )
            )
    cycle = r["cycle"]
    rows.append(("passivation (stop by name)", _ms(cycle["passivate"])))
    live = cycle["live_status"]["median_ms"]
    rows.append(
        ("activation (first status of a passivated session)", f"{_ms(cycle['activate'])} (live: {live:.2f} ms)")
    )
    fo = r["failover"]
    rows.append(
        (
            f"failover, {fo['kills']} SIGKILLs, lease_ttl {fo['lease_ttl']:g} s",
            f"median {fo['median_s']:.2f} s, max {fo['max_s']:.2f} s, min {fo['min_s']:.2f} s",
        )
    )
    held = r["held"]
    db = held["db"]
    rows.append(
        (
            f"{held['created']:,} sessions created then passivated through one node",
            f"{held['create_per_s']:,.0f}/s; node RSS {held['rss_before_mb']:.1f} -> {held['rss_after_mb']:.1f} MB,"
            f" {held['live_after']} live",
        )
    )
    size = f"{db['records']:,} records, {db['leases']:,} leases, {db['bytes'] / 2**20:.1f} MiB"
    rows.append(("database then (every session of this bench)", size))
    rows.append((f"orphan scan, {db['leases']:,} leases", _ms(held["orphan_scan_small"], 2)))
    if "filled_to" in held:
        filled = held["db_filled"]
        size = f"{filled['records']:,} records, {filled['bytes'] / 2**20:.1f} MiB"
        rows.append(
            (f"filled by SQL copies to {filled['leases']:,} leases", f"{size}; node RSS {held['rss_filled_mb']:.1f} MB")
        )
        rows.append((f"orphan scan, {filled['leases']:,} leases", _ms(held["orphan_scan_filled"], 2)))
        rows.append(("reactivation of random sessions among them", _ms(held["reactivate_filled"])))
    print(f"machine: {r['machine']}")
    print()
    print("| measurement | result |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    sys.exit(main())
