"""Instructions per turn and per streamed delta through one SessionServer, under callgrind.

    PYTHONPATH=. .venv/bin/python bench/profile_turn.py                  # every row, under valgrind
    PYTHONPATH=. .venv/bin/python bench/profile_turn.py --rows memory,sqlite
    PYTHONPATH=. .venv/bin/python bench/profile_turn.py --cprofile memory  # where the time goes

Wall and CPU time are noisy on a shared, loaded machine; the number of instructions
executed is not (within a fraction of a percent). Each row runs under ``valgrind
--tool=callgrind --dump-before=os_getppid``: the program calls ``os.getppid()`` just
before and just after its ``--turns`` measured turns, so callgrind's second dump holds
those turns alone (no imports, no start, no warm-up turn, no teardown), and is divided
by ``--turns``. ``PYTHONHASHSEED`` is fixed. Valgrind starts with instrumentation off
(``--instr-atstart=no``) and the program turns it on with ``callgrind_control -i on``
once its imports are done: five times faster, and the counts stay steady.

Rows (one SessionServer, a `ScriptedProvider` answering at once, ``send_message`` in a
loop from one task):

- ``direct``: the provider alone, a 1 KB one-delta reply driven on a connected session
  (the provider's own cost, to subtract);
- ``memory``: the same reply through a SessionServer on an `InMemoryStore`;
- ``sqlite``: the same on a `SqliteStore` (its writer thread and SQLite included; the
  fsyncs are system calls, not counted);
- ``d1.N`` / ``d100.N``: a reply of 1 or 100 deltas, ``N`` subscribers draining the
  session's events (``direct1`` / ``direct100``: the provider alone); per delta is
  ``(d100.N - d1.N) / 99``.

Telemetry is off (``configure_telemetry(enabled=False)``) unless the row's name ends in
``+otel`` (``memory+otel``): then it is on as it is by default when opentelemetry-api
is installed, with OpenTelemetry's no-op default providers.

``--cprofile ROW`` runs one row under cProfile instead (attribution, not counts).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the working tree's sessions

import otpy
import sessions
from sessions import InMemoryStore, ScriptedProvider, ScriptedReply, SessionServer, SqliteStore

ONE_KB = ("lorem ipsum " * 86)[:1024]
REPLY = ScriptedReply(ONE_KB, deltas=(ONE_KB,))
PROMPT = "p" * 170
DELTAS_100 = ScriptedReply("", deltas=tuple(f"w{i:03d}-words " for i in range(100)))
DELTAS_1 = ScriptedReply("", deltas=("".join(DELTAS_100.deltas or ()),))

ROWS = ["direct", "memory", "sqlite", "direct1", "direct100"] + [f"d{n}.{s}" for s in (0, 1, 10) for n in (1, 100)]


def _reply(row: str) -> ScriptedReply:
    if row.startswith(("d100.", "direct100")):
        return DELTAS_100
    if row.startswith("d1.") or row == "direct1":
        return DELTAS_1
    return REPLY


async def _drain(subscription: sessions.Subscription) -> None:
    async for _event in subscription:
        pass


async def run_row(row: str, turns: int, directory: Path) -> None:
    row, _, otel = row.partition("+")
    sessions.configure_telemetry(enabled=None if otel == "otel" else False)
    provider = ScriptedProvider(default=_reply(row))
    if row.startswith("direct"):
        async with provider.connect(sessions.SessionContext(session_id="direct")) as conn:
            for n in range(turns + 1):
                if n == 1:
                    gc.collect()
                    os.getppid()  # callgrind dumps here: the measured turns begin
                async for _event in conn.run_turn(sessions.TurnRequest(turn=n + 1, prompt=PROMPT, messages=())):
                    pass
            os.getppid()  # and end here
        return
    store: sessions.Store = SqliteStore(directory / "s.db") if row == "sqlite" else InMemoryStore()
    subscribers = int(row.split(".")[1]) if "." in row else 0
    async with trio.open_nursery() as nursery:
        pid = await SessionServer.start_link(provider=provider, store=store, nursery=nursery)
        for _ in range(subscribers):
            nursery.start_soon(_drain, await SessionServer.subscribe(pid, buffer=1000))
        await SessionServer.send_message(pid, PROMPT)  # connected, warm
        gc.collect()
        os.getppid()  # callgrind dumps here: the measured turns begin
        for _ in range(turns):
            await SessionServer.send_message(pid, PROMPT)
        os.getppid()  # and end here
        await otpy.stop(pid)
    await store.aclose()


def _callgrind(row: str, turns: int, keep: Path | None) -> float:
    """Instructions per measured turn of ``row``, under callgrind."""
    with tempfile.TemporaryDirectory(prefix="profile-turn-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "PROFILE_TURN_CALLGRIND": "1"}
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=os_getppid",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--run",
            row,
            "--turns",
            str(turns),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{row}: valgrind failed\n{done.stderr[-2000:]}")
        measured = Path(f"{out}.2")  # dump 1: start-up; dump 2: the measured turns
        match = re.search(r"^(?:summary|totals): (\d+)", measured.read_text(), re.M)
        assert match is not None, measured
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"callgrind.{row}.out").write_text(measured.read_text())
        return int(match.group(1)) / turns


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--run", help="(internal) run one row in this process")
    parser.add_argument("--turns", type=int, default=100, help="measured turns per row")
    parser.add_argument("--keep", type=Path, help="keep each row's callgrind dump here (for callgrind_annotate)")
    parser.add_argument("--cprofile", metavar="ROW")
    args = parser.parse_args()
    if args.run:
        if os.environ.get("PROFILE_TURN_CALLGRIND"):  # under valgrind: instrument from here on
            subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=True)
        with tempfile.TemporaryDirectory(prefix="profile-turn-") as tmp:
            trio.run(run_row, args.run, args.turns, Path(tmp))
        return 0
    if args.cprofile:
        profile = cProfile.Profile()
        with tempfile.TemporaryDirectory(prefix="profile-turn-") as tmp:
            profile.enable()
            trio.run(run_row, args.cprofile, args.turns, Path(tmp))
            profile.disable()
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(40)
        return 0
    per_turn: dict[str, float] = {}
    for row in args.rows.split(","):
        per_turn[row] = _callgrind(row, args.turns, args.keep)
        print(f"{row:<10} {per_turn[row]:>12,.0f} instructions per turn", flush=True)
    if "direct" in per_turn and "memory" in per_turn:
        print(f"memory - direct: {per_turn['memory'] - per_turn['direct']:,.0f} instructions per turn (the server)")
    if "direct" in per_turn and "sqlite" in per_turn:
        print(f"sqlite - direct: {per_turn['sqlite'] - per_turn['direct']:,.0f} instructions per turn")
    if "direct1" in per_turn and "direct100" in per_turn:
        direct = (per_turn["direct100"] - per_turn["direct1"]) / 99
        print(f"per delta, provider alone: {direct:,.0f}")
        for subs in (0, 1, 10):
            a, b = per_turn.get(f"d1.{subs}"), per_turn.get(f"d100.{subs}")
            if a is not None and b is not None:
                server = (b - a) / 99
                print(f"per delta, {subs:>2} subscribers: {server:,.0f} ({server - direct:,.0f} above the provider)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
