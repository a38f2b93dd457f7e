"""otpy's benchmark suite: otpy against triotp, pykka, bare trio (and Elixir when present).

    python bench/run.py                      # the full suite (several minutes)
    python bench/run.py --quick              # a few hundred operations per row, in seconds
    python bench/run.py --systems otpy,trio --rows a,b,c

Every system runs in a child process of its own virtualenv's python (peers live in
bench/.cache/, created on first use): one process per (row, system, round), which warms
up and then measures with its own timers. The driver alternates the systems within
every round, so drift in the machine hits all of them alike, and reports medians with
their min-max spread, the ratios otpy/peer, and the targets as PASS/FAIL. See
bench/README.md.

The driver itself needs only the standard library.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
SYSTEMS_DIR = BENCH / "systems"
DEFAULT_OUT = BENCH / "results" / "latest.json"
DEFAULT_CHART = ROOT / "docs" / "performance-ratios.png"

ALL_SYSTEMS = ("otpy", "triotp", "pykka", "trio", "elixir")
PEERS = ("triotp", "pykka", "trio", "elixir")
TITLES = {"otpy": "otpy", "triotp": "triotp", "pykka": "pykka", "trio": "trio floor", "elixir": "Elixir/OTP"}
SHORT = {"triotp": "triotp", "pykka": "pykka", "trio": "floor", "elixir": "Elixir"}
ROWS = "abcdef"
SUPPORTED = {
    "otpy": set("abcdef"),
    "triotp": set("abcdef"),
    "pykka": set("abcd"),  # no supervisor, no names
    "trio": set("abcdf"),  # the floor: a-c; d and f for reference
    "elixir": set("abcdef"),
}


@dataclass(frozen=True)
class Size:
    n: int
    warmup: int
    clients: int = 100
    small: int = 1000


FULL = {
    "a": Size(20_000, 2_000),
    "b": Size(100_000, 10_000),
    "c": Size(200_000, 20_000),
    "d": Size(10_000, 200),  # a small warm-up: its freed memory would be reused by the measured pass
    "e": Size(1_000, 100),
    "f": Size(100_000, 10_000, small=1_000),
}
QUICK = {
    "a": Size(300, 60),
    "b": Size(500, 100),
    "c": Size(500, 100),
    "d": Size(200, 20),
    "e": Size(50, 10),
    "f": Size(500, 100, small=100),
}


@dataclass(frozen=True)
class Metric:
    key: str  # "<row>.<name>", as the measurement processes report it
    label: str
    unit: str
    higher_is_better: bool
    of: tuple[str, str] | None = None  # derived: the ratio of these two metrics, round by round


METRICS = (
    Metric("a.calls_per_s", "a. call round trip, 1 client", "calls/s", True),
    Metric("a.calls_per_s_name", "a. call round trip, 1 client, by name", "calls/s", True),
    Metric("a.us_per_call", "a. time per call", "µs", False),
    Metric("a.us_per_call_name", "a. time per call, by name", "µs", False),
    Metric("b.calls_per_s", "b. 100 concurrent clients", "calls/s", True),
    Metric("b.calls_per_s_name", "b. 100 concurrent clients, by name", "calls/s", True),
    Metric("c.casts_per_s", "c. casts, then one call", "casts/s", True),
    Metric("c.casts_per_s_name", "c. casts, then one call, by name", "casts/s", True),
    Metric("c.casts_per_s_drain", "c. (floor: batch-drain channel)", "casts/s", True),
    Metric("d.starts_per_s", "d. start under a DynamicSupervisor", "starts/s", True),
    Metric("d.stops_per_s", "d. stop them all", "stops/s", True),
    Metric("d.rss_bytes_per_server", "d. resident memory per server (RSS delta)", "B", False),
    Metric("e.restart_us", "e. crash -> call reaches restarted child (median)", "µs", False),
    Metric("e.restart_us_p90", "e. same, 90th percentile", "µs", False),
    Metric("f.register_us_small", "f. register, 1,000 names", "µs/op", False),
    Metric("f.lookup_us_small", "f. lookup, 1,000 names", "µs/op", False),
    Metric("f.register_us", "f. register, 100,000 names", "µs/op", False),
    Metric("f.lookup_us", "f. lookup, 100,000 names", "µs/op", False),
    Metric(
        "f.register_flatness", "f. register flatness (100k / 1k)", "x", False, ("f.register_us", "f.register_us_small")
    ),
    Metric("f.lookup_flatness", "f. lookup flatness (100k / 1k)", "x", False, ("f.lookup_us", "f.lookup_us_small")),
    Metric("f.registry_register_us", "f. otpy.Registry register, 100,000 names", "µs/op", False),
    Metric("f.registry_lookup_us", "f. otpy.Registry lookup, 100,000 names", "µs/op", False),
)


@dataclass(frozen=True)
class Target:
    label: str
    metric: str
    peer: str | None  # None: a property of otpy alone (its value is compared to the bound)
    bound: float
    at_least: bool  # ratio (or value) >= bound; else <= bound
    # Flatness: a plain dict (the trio floor's row f) slows down too from 1,000 to
    # 100,000 names, from CPU caches alone. When the floor's growth in the same run
    # exceeds the bound, the bound is the floor's growth: otpy may not add growth of its own.
    or_floor: bool = False


# Each target compares the systems addressed the same way: triotp can reach a server
# only by name, so its targets use the rows' by-name metrics; pykka's ActorRef is its
# pid, and the floor has no addressing at all, so theirs use the by-pid metrics.
TARGETS = (
    Target("a. calls/s >= 2.5x triotp (by name)", "a.calls_per_s_name", "triotp", 2.5, True),
    Target("a. calls/s >= 2x pykka", "a.calls_per_s", "pykka", 2.0, True),
    Target("a. calls/s >= 0.7x bare trio floor", "a.calls_per_s", "trio", 0.7, True),
    Target("b. calls/s >= 2.5x triotp (by name)", "b.calls_per_s_name", "triotp", 2.5, True),
    Target("b. calls/s >= 2x pykka", "b.calls_per_s", "pykka", 2.0, True),
    Target("b. calls/s >= 0.7x bare trio floor", "b.calls_per_s", "trio", 0.7, True),
    Target("c. casts/s >= 6x triotp (by name)", "c.casts_per_s_name", "triotp", 6.0, True),
    Target("c. casts/s >= 2x pykka", "c.casts_per_s", "pykka", 2.0, True),
    Target("d. start rate >= 10x triotp", "d.starts_per_s", "triotp", 10.0, True),
    Target("d. memory per server <= 0.5x triotp", "d.rss_bytes_per_server", "triotp", 0.5, False),
    Target("e. restart latency <= 0.5x triotp", "e.restart_us", "triotp", 0.5, False),
    Target(
        "f. lookup flat: cost at 100k names <= 1.5x (or a dict's growth) the cost at 1k",
        "f.lookup_flatness",
        None,
        1.5,
        False,
        or_floor=True,
    ),
    Target(
        "f. register flat: cost at 100k names <= 1.5x (or a dict's growth) the cost at 1k",
        "f.register_flatness",
        None,
        1.5,
        False,
        or_floor=True,
    ),
)


# --- environments ----------------------------------------------------------------------


@dataclass
class System:
    name: str
    command: list[str]  # the program that runs one measurement; the row arguments follow
    env: dict[str, str]
    note: str = ""
    pinnable: bool = True  # confined to one core when the run pins (--pin one); not BEAM


def _run(cmd: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs)


def _peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # a peer's venv must see only its own packages
    env.pop("PYTHONHOME", None)
    return env


def _otpy_env() -> dict[str, str]:
    # The working tree's otpy is what is measured, whichever interpreter runs it.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _venv(name: str, requirements: Sequence[str], install: bool) -> Path | None:
    """bench/.cache/<name>, a venv with ``requirements``; made on first use if ``install``."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    ready = venv / ".bench-ready"
    if ready.exists() and ready.read_text() == "\n".join(requirements) and python.exists():
        return python
    if not install:
        return None
    print(f"  setting up {venv.relative_to(ROOT)}: pip install {' '.join(requirements)}", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    made = _run([sys.executable, "-m", "venv", venv])
    if made.returncode != 0:
        print(f"  could not create {venv}: {made.stderr.strip()[-400:]}", flush=True)
        return None
    pip = _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements])
    if pip.returncode != 0:
        print(f"  pip install {' '.join(requirements)} failed: {pip.stderr.strip()[-400:]}", flush=True)
        return None
    ready.write_text("\n".join(requirements))
    return python


def _otpy_python(install: bool) -> Path | None:
    probe = _run([sys.executable, "-c", "import trio, attrs, structlog, outcome, otpy"], env=_otpy_env())
    if probe.returncode == 0:
        return Path(sys.executable)
    return _venv("otpy", [str(ROOT)], install)


def setup_systems(names: Sequence[str], install: bool) -> tuple[dict[str, System], dict[str, str]]:
    """The systems that can run, and why the others cannot."""
    systems: dict[str, System] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in ("otpy", "trio"):
            python = _otpy_python(install)
            if python is None:
                skipped[name] = "no interpreter with otpy's dependencies (run without --no-install)"
                continue
            note = "" if name == "otpy" else "same interpreter and trio as otpy"
            script = SYSTEMS_DIR / f"{name}_bench.py"
            systems[name] = System(name, [str(python), str(script)], _otpy_env(), note)
        elif name in ("triotp", "pykka"):
            requirement = "triotp" if name == "triotp" else "pykka>=4,<5"
            python = _venv(name, [requirement], install)
            if python is None:
                skipped[name] = f"bench/.cache/{name} is not set up" + ("" if install else " (no install in this mode)")
                continue
            systems[name] = System(name, [str(python), str(SYSTEMS_DIR / f"{name}_bench.py")], _peer_env())
        elif name == "elixir":
            elixir = shutil.which("elixir")
            if elixir is None:
                skipped[name] = "elixir is not on PATH"
                continue
            systems[name] = System(
                name, [elixir, str(SYSTEMS_DIR / "elixir_bench.exs")], _peer_env(), "all cores", pinnable=False
            )
        else:
            raise SystemExit(f"unknown system {name!r}; known: {', '.join(ALL_SYSTEMS)}")
    return systems, skipped


# --- running -------------------------------------------------------------------------------


@dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # system -> metric -> values
    rounds: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # the round of each of those values
    errors: list[str] = field(default_factory=list)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per measurement: the share of the machine's CPU time that went to other work
    # than the measurement (other processes, and the hypervisor's steal time).
    other_cpu: list[float] = field(default_factory=list)
    retries: int = 0  # measurements repeated because other work disturbed them

    def add(self, system: str, key_prefix: str, metrics: dict[str, float], round_: int) -> None:
        values, rounds = self.values.setdefault(system, {}), self.rounds.setdefault(system, {})
        for name, value in metrics.items():
            key = f"{key_prefix}.{name}" if key_prefix else name
            values.setdefault(key, []).append(float(value))
            rounds.setdefault(key, []).append(round_)

    def by_round(self, system: str, key: str) -> dict[int, float]:
        return dict(
            zip(self.rounds.get(system, {}).get(key, []), self.values.get(system, {}).get(key, []), strict=True)
        )


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:9]]
    if len(fields) < 8:
        return 0, 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal, steal


def _other_cpu_share(before: tuple[int, int, float, float], after: tuple[int, int, float, float]) -> float:
    """The share of all cores' time, during one measurement, used by anything but the measurement."""
    busy = (after[0] - before[0]) / os.sysconf("SC_CLK_TCK")
    ours = after[2] - before[2]
    wall = after[3] - before[3]
    cores = os.cpu_count() or 1
    return max(0.0, busy - ours) / (wall * cores) if wall > 0 else 0.0


def _snapshot() -> tuple[int, int, float, float]:
    busy, steal = _cpu_jiffies()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, steal, usage.ru_utime + usage.ru_stime, time.monotonic()


def _pinned_to(cpu: int | None) -> Any:
    """A preexec_fn that confines the child (and its threads) to ``cpu``; None: no confinement."""
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def run_one(
    system: System, row: str, size: Size, timeout: float, cpu: int | None = None
) -> tuple[dict[str, Any] | None, str]:
    with tempfile.TemporaryDirectory(prefix="otpy-bench-") as tmp:
        out = Path(tmp) / "result.json"
        args = ["--row", row, "--n", str(size.n), "--warmup", str(size.warmup)]
        args += ["--clients", str(size.clients), "--small", str(size.small), "--out", str(out)]
        try:
            pin = _pinned_to(cpu if system.pinnable else None)
            done = _run([*system.command, *args], env=system.env, timeout=timeout, cwd=tmp, preexec_fn=pin)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s"
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"exit {done.returncode}: " + " | ".join(tail)
        return json.loads(out.read_text()), ""


def measure_quietly(
    system: System, row: str, size: Size, timeout: float, quiet: float, attempts: int, cpu: int | None = None
) -> tuple[dict[str, Any] | None, str, float, int]:
    """Run one measurement; repeat it (up to ``attempts`` in all) while other work took
    more than ``quiet`` of the machine meanwhile. Keep the least disturbed attempt.

    Returns (result, error, other work's share during the kept attempt, attempts made).
    """
    best: tuple[dict[str, Any] | None, str, float] = (None, "", 1.0)
    for attempt in range(1, attempts + 1):
        before = _snapshot()
        result, error = run_one(system, row, size, timeout, cpu)
        share = _other_cpu_share(before, _snapshot())
        if result is None:
            return None, error, share, attempt
        if best[0] is None or share < best[2]:
            best = (result, "", share)
        if share <= quiet:
            break
    return best[0], best[1], best[2], attempt


def run_rounds(
    systems: dict[str, System],
    rows: str,
    sizes: dict[str, Size],
    reps: int,
    timeout: float,
    partial: Path | None,
    quiet: float = 0.15,
    attempts: int = 4,
    pin: bool = True,
) -> Results:
    results = Results()
    order = list(systems)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for rep in range(reps):
        shift = rep % len(order)
        rotated = order[shift:] + order[:shift]  # alternate which system goes first
        # Every Python system of a round runs on the same single core; the core changes
        # from round to round. See "Cores" in bench/README.md.
        cpu = cpus[rep % len(cpus)] if pin and cpus else None
        for row in rows:
            line = [f"round {rep + 1}/{reps}  row {row}:"]
            for name in rotated:
                if row not in SUPPORTED[name]:
                    continue
                result, error, share, tries = measure_quietly(
                    systems[name], row, sizes[row], timeout, quiet, attempts, cpu
                )
                results.other_cpu.append(share)
                results.retries += tries - 1
                if result is None:
                    results.errors.append(f"{name} row {row} round {rep + 1}: {error}")
                    line.append(f"{name} ERROR")
                    continue
                results.add(name, row, result["metrics"], rep)
                results.info.setdefault(name, {}).update(result.get("info", {}))
                again = f" (x{tries})" if tries > 1 else ""
                line.append(f"{name} {result['info'].get('wall_s', 0.0):.1f}s{again}")
            print("  " + "  ".join(line), flush=True)
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"rounds_done": rep + 1, "values": results.values}, indent=1))
    return results


# --- statistics and report --------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int


def _stat(values: Sequence[float]) -> Stat:
    return Stat(median(values), min(values), max(values), len(values))


@dataclass
class Summary:
    """Medians per system, and ratios otpy/peer.

    A ratio is the median of the ratios of each round: within a round the systems run
    one after the other, so the ratio of one round compares them under the same
    conditions, and the median over the rounds drops the rounds that noise upset.
    """

    stats: dict[str, dict[str, Stat]]  # system -> metric -> its values over the rounds
    ratios: dict[str, dict[str, Stat]]  # peer -> metric -> otpy's value / the peer's, round by round


def summarize(results: Results) -> Summary:
    for system in list(results.values):
        for metric in METRICS:
            if metric.of is None or metric.key in results.values[system]:
                continue
            big, small = (results.by_round(system, key) for key in metric.of)
            derived = {r: big[r] / small[r] for r in big if small.get(r)}
            for r, value in derived.items():
                results.add(system, "", {metric.key: value}, r)
    stats = {
        system: {key: _stat(values) for key, values in per_metric.items() if values}
        for system, per_metric in results.values.items()
    }
    ratios: dict[str, dict[str, Stat]] = {}
    for peer in results.values:
        if peer == "otpy":
            continue
        for key in results.values.get("otpy", {}):
            ours, theirs = results.by_round("otpy", key), results.by_round(peer, key)
            per_round = [ours[r] / theirs[r] for r in ours if theirs.get(r)]
            if per_round:
                ratios.setdefault(peer, {})[key] = _stat(per_round)
    return Summary(stats, ratios)


def fmt(value: float, unit: str) -> str:
    if unit in ("calls/s", "casts/s", "starts/s", "stops/s"):
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    if unit == "B":
        return f"{value / 1000:.3g} kB" if abs(value) >= 1000 else f"{value:.0f} B"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_stat(stat: Stat, unit: str) -> str:
    return f"{fmt(stat.median, unit)} [{fmt(stat.low, unit)} - {fmt(stat.high, unit)}]"


def evaluate(summary: Summary) -> list[dict[str, Any]]:
    stats = summary.stats
    verdicts = []
    for target in TARGETS:
        if target.peer is None:
            stat = stats.get("otpy", {}).get(target.metric)
        else:
            stat = summary.ratios.get(target.peer, {}).get(target.metric)
        value = None if stat is None else stat.median
        bound, floor = target.bound, None
        if target.or_floor:
            floor_stat = stats.get("trio", {}).get(target.metric)
            floor = None if floor_stat is None else floor_stat.median
            if floor is not None:
                bound = max(bound, floor) if not target.at_least else min(bound, floor)
        if value is None:
            verdict = "n/a"
        elif target.at_least:
            verdict = "PASS" if value >= bound else "FAIL"
        else:
            verdict = "PASS" if value <= bound else "FAIL"
        verdicts.append(
            {
                "target": target.label,
                "metric": target.metric,
                "peer": target.peer,
                "bound": bound,
                "at_least": target.at_least,
                "value": value,
                "spread": None if stat is None else [stat.low, stat.high],
                "floor": floor,
                "verdict": verdict,
            }
        )
    return verdicts


def medians_table(summary: Summary, systems: Sequence[str]) -> list[str]:
    stats = summary.stats
    peers = [s for s in systems if s != "otpy"]
    head = ["metric", "unit", *(TITLES[s] for s in systems), *(f"otpy/{SHORT[p]}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["--:"] * (len(head) - 2)) + "|"]
    for metric in METRICS:
        cells = []
        for system in systems:
            stat = stats.get(system, {}).get(metric.key)
            cells.append("—" if stat is None else fmt_stat(stat, metric.unit))
        if all(c == "—" for c in cells):
            continue
        ratios = []
        for peer in peers:
            stat = summary.ratios.get(peer, {}).get(metric.key)
            ratios.append("—" if stat is None else f"{stat.median:.2f}x [{stat.low:.2f} - {stat.high:.2f}]")
        lines.append("| " + " | ".join([metric.label, metric.unit, *cells, *ratios]) + " |")
    return lines


def targets_table(verdicts: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured [min - max over the rounds] | result |", "|---|--:|:-:|"]
    for v in verdicts:
        measured = "—" if v["value"] is None else f"{v['value']:.2f}x"
        if v["spread"] is not None:
            measured += f" [{v['spread'][0]:.2f} - {v['spread'][1]:.2f}]"
        if v.get("floor") is not None:
            measured += f" (dict: {v['floor']:.2f}x)"
        lines.append(f"| {v['target']} | {measured} | {v['verdict']} |")
    return lines


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    meminfo = _read("/proc/meminfo").split()
    mem_kb = int(meminfo[1]) if len(meminfo) > 1 and meminfo[1].isdigit() else 0
    commit = _run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = bool(_run(["git", "-C", ROOT, "status", "--porcelain", "--", "otpy"]).stdout.strip())
    return {
        "cpu": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "driver_python": platform.python_version(),
        "otpy_commit": commit + (" (otpy/ has uncommitted changes)" if dirty else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def versions(results: Results, notes: dict[str, str]) -> list[str]:
    lines = []
    for name, note_text in notes.items():
        info = results.info.get(name, {})
        parts = [f"{k} {v}" for k, v in info.items() if k not in ("wall_s", "executable", "otpy_file") and v]
        where = info.get("otpy_file") or info.get("executable") or ""
        note = f"; {note_text}" if note_text else ""
        lines.append(f"- {TITLES[name]}: {', '.join(parts)}{note}" + (f" ({where})" if where else ""))
    return lines


# --- chart -----------------------------------------------------------------------------------


def chart_data(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One bar per target against a peer, as "times better than the peer" (so > 1 is always better)."""
    bars = []
    for v in verdicts:
        if v["peer"] is None or v["value"] is None:
            continue
        advantage = v["value"] if v["at_least"] else 1 / v["value"]
        goal = v["bound"] if v["at_least"] else 1 / v["bound"]
        bars.append(
            {"label": v["target"], "ratio": v["value"], "advantage": advantage, "goal": goal, "verdict": v["verdict"]}
        )
    return bars


def draw_chart(report_path: Path, chart: Path, install: bool) -> str:
    chart.parent.mkdir(parents=True, exist_ok=True)
    python = _venv("plot", ["matplotlib"], install)
    if python is not None:
        done = _run([python, BENCH / "chart.py", report_path, chart], env=_peer_env())
        if done.returncode == 0:
            return "matplotlib"
        print(f"  matplotlib chart failed, using the built-in renderer: {done.stderr.strip()[-300:]}", flush=True)
    sys.path.insert(0, str(BENCH))
    import tiny_png  # the fallback, only when matplotlib is unavailable

    tiny_png.render_report(json.loads(report_path.read_text()), chart)
    return "built-in PNG renderer"


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="otpy's benchmark suite; see bench/README.md.")
    parser.add_argument("--quick", action="store_true", help="a few hundred operations per row; peers only if cached")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="comma-separated: " + ",".join(ALL_SYSTEMS))
    parser.add_argument("--rows", default=ROWS, help="which rows, e.g. abc (default: all)")
    parser.add_argument("--reps", type=int, default=None, help="measured rounds (default 7, quick 2)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/latest.json)")
    parser.add_argument(
        "--chart", default=None, help="PNG of the ratios, or 'none' (default docs/performance-ratios.png)"
    )
    parser.add_argument("--no-install", action="store_true", help="never create venvs; skip peers not set up")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement process")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.15,
        help="repeat a measurement during which other work took more than this share of the machine (default 0.15)",
    )
    parser.add_argument("--attempts", type=int, default=4, help="at most this many tries per measurement (default 4)")
    parser.add_argument(
        "--pin",
        choices=("one", "none"),
        default="one",
        help="one: run each Python system's measurement on a single core, the same for all in a round "
        "(default); none: let the OS place its threads (Elixir is never pinned)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="measure nothing: report (tables, JSON, chart) again from the values in a results JSON",
    )
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")

    quick = args.quick
    sizes = QUICK if quick else FULL
    reps = args.reps if args.reps is not None else (2 if quick else 7)
    rows = "".join(r for r in args.rows.replace(",", "") if r in ROWS)
    install = not (quick or args.no_install)
    out = args.out or (BENCH / "results" / "quick.tmp" if quick else DEFAULT_OUT)
    chart_arg = args.chart if args.chart is not None else ("none" if quick else str(DEFAULT_CHART))
    timeout = args.timeout or (120.0 if quick else 900.0)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "otpy" not in wanted:
        wanted.insert(0, "otpy")

    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_json is not None:
        return report_again(args.from_json, out if args.out else args.from_json, chart_arg, install, args.quiet)

    machine = machine_info()
    print("otpy benchmark" + (" (quick: smoke sizes, not for comparison)" if quick else ""))
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['cores_usable']} usable), "
        f"{machine['memory_gib']} GiB, {machine['os']}; driver Python {machine['driver_python']}; "
        f"otpy {machine['otpy_commit']}"
    )
    systems, skipped = setup_systems(wanted, install)
    for name, why in skipped.items():
        print(f"  skipping {name}: {why}")
    if "otpy" not in systems:
        print("otpy cannot run; nothing to compare", file=sys.stderr)
        return 2
    pinning = "each Python system on one core per round" if args.pin == "one" else "not pinned"
    print(f"systems: {', '.join(systems)}; rows: {rows}; {reps} rounds; {pinning}; command: {command}", flush=True)

    partial = None if quick else out.with_suffix(".json.tmp")
    attempts = 1 if quick else args.attempts
    results = run_rounds(systems, rows, sizes, reps, timeout, partial, args.quiet, attempts, args.pin == "one")
    notes = {name: system.note for name, system in systems.items()}
    meta = {"command": command, "quick": quick, "reps": reps, "skipped": skipped, "pin": args.pin}
    meta["sizes"] = {row: vars(size) for row, size in sizes.items() if row in rows}
    status = write_report(results, machine, notes, meta, out, chart_arg, install, args.quiet)
    if partial is not None and partial.exists():
        partial.unlink()
    return status


def report_again(source: Path, out: Path, chart_arg: str, install: bool, quiet: float) -> int:
    """Summarize, print and write again the values of an earlier run."""
    old = json.loads(source.read_text())
    results = Results(errors=old.get("errors", []), info=old.get("systems", {}))
    results.other_cpu = old.get("other_cpu_share", [])
    results.retries = old.get("retries", 0)
    derived = {metric.key for metric in METRICS if metric.of is not None}
    for system, per_metric in old["values"].items():
        for key, values in per_metric.items():
            if key in derived:
                continue  # computed again from the values they derive from
            rounds = old.get("rounds", {}).get(system, {}).get(key, list(range(len(values))))
            for round_, value in zip(rounds, values, strict=True):
                results.add(system, "", {key: value}, round_)
    notes = {name: ("same interpreter and trio as otpy" if name == "trio" else "") for name in results.info}
    meta = {key: old[key] for key in ("command", "quick", "reps", "skipped", "sizes", "pin") if key in old}
    return write_report(results, old["machine"], notes, meta, out, chart_arg, install, quiet)


def write_report(
    results: Results,
    machine: dict[str, Any],
    notes: dict[str, str],
    meta: dict[str, Any],
    out: Path,
    chart_arg: str,
    install: bool,
    quiet: float,
) -> int:
    """Print the tables, write the JSON and the chart; the exit status."""
    reps = meta["reps"]
    summary = summarize(results)
    verdicts = evaluate(summary)
    order = [s for s in ALL_SYSTEMS if s in notes]

    print()
    print("## Machine")
    print(f"- CPU: {machine['cpu']}, {machine['cores']} cores; {machine['memory_gib']} GiB; {machine['os']}")
    print(f"- otpy {machine['otpy_commit']}, {machine['date']}")
    if "pin" in meta:
        pinned = "one core per round (--pin one)" if meta["pin"] == "one" else "not pinned (--pin none)"
        print(f"- Python systems: {pinned}; Elixir: all cores")
    if results.other_cpu:
        other = sorted(results.other_cpu)
        print(
            f"- CPU time taken by other work (other processes, hypervisor steal) during the measurements: "
            f"median {median(other):.0%}, max {other[-1]:.0%} of the machine; {results.retries} measurements "
            f"repeated because other work took more than {quiet:.0%} during them"
        )
    for line in versions(results, notes):
        print(line)
    print()
    print(
        f"## Medians [min - max] over {reps} rounds, and ratios otpy/peer (median [min - max] of the per-round ratios)"
    )
    print()
    print("\n".join(medians_table(summary, order)))
    print()
    print("## Targets")
    print()
    print("\n".join(targets_table(verdicts)))
    if results.errors:
        print()
        print("## Errors")
        for error in results.errors:
            print(f"- {error}")

    report = {
        **meta,
        "machine": machine,
        "systems": {name: results.info.get(name, {}) for name in notes},
        "values": results.values,
        "rounds": results.rounds,
        "stats": {s: {k: vars(v) for k, v in m.items()} for s, m in summary.stats.items()},
        "ratios": {p: {k: vars(v) for k, v in m.items()} for p, m in summary.ratios.items()},
        "targets": verdicts,
        "chart": chart_data(verdicts),
        "errors": results.errors,
        "other_cpu_share": results.other_cpu,
        "retries": results.retries,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(f"results: {out}")
    if chart_arg != "none":
        how = draw_chart(out, Path(chart_arg), install)
        print(f"chart: {chart_arg} ({how})")
    return 1 if results.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
