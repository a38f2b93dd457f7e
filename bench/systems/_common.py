"""What every system's measurement process shares.

Stdlib only: this module runs in each system's own virtualenv (triotp's pins an old
trio, pykka's has no trio at all). A measurement process runs ONE row once: a warm-up
pass at a smaller size, then the measured pass, timed with `time.perf_counter`. It
writes its metrics as JSON to ``--out``; the driver (bench/run.py) collects them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

perf_counter = time.perf_counter
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

Metrics = dict[str, float]


@dataclass(frozen=True)
class Params:
    """One measurement: which row, how big, and how big its warm-up is."""

    row: str
    n: int
    warmup: int
    clients: int
    small: int  # f: the small name count for the flatness check
    out: str


def parse_args() -> Params:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--row", required=True, choices=list("abcdef"))
    parser.add_argument("--n", type=int, required=True, help="operations (or servers) in the measured pass")
    parser.add_argument("--warmup", type=int, required=True, help="operations in the warm-up pass (0: none)")
    parser.add_argument("--clients", type=int, default=100, help="b: concurrent clients")
    parser.add_argument("--small", type=int, default=1000, help="f: the small name count (flatness)")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    ns = parser.parse_args()
    return Params(ns.row, ns.n, ns.warmup, ns.clients, ns.small, ns.out)


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (resident pages x page size)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def settle() -> None:
    """Collect garbage before a timed section, so no system pays for the previous one's."""
    gc.collect()


def name_table_costs(
    p: Params,
    names: list[str],
    targets: list[Any],
    register_lookup: Callable[[list[str], list[Any]], tuple[float, float]],
    clear: Callable[[], None],
) -> Metrics:
    """Row f's measurement, the same for every system: µs per register and per lookup.

    ``register_lookup(names, targets)`` registers each name, then looks each one up,
    and returns the seconds of both phases. Flatness compares the same names and
    targets in tables of ``p.small`` names each (register, look up, ``clear``, next
    slice) with one table of all ``p.n`` names, so both sizes touch every name once
    per phase and only the size of the table differs. The full table is left in place
    for the caller to check and clear.
    """
    repeats = max(1, p.n // p.small)
    reg_s = look_s = 0.0
    settle()
    for k in range(repeats):
        part = slice(k * p.small, (k + 1) * p.small)
        r, lk = register_lookup(names[part], targets[part])
        reg_s, look_s = reg_s + r, look_s + lk
        clear()
    settle()
    r, lk = register_lookup(names, targets)
    return {
        "register_us_small": reg_s / (repeats * p.small) * 1e6,
        "lookup_us_small": look_s / (repeats * p.small) * 1e6,
        "register_us": r / p.n * 1e6,
        "lookup_us": lk / p.n * 1e6,
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scaled(params: Params, n: int) -> Params:
    """The same measurement at another size (the warm-up pass)."""
    return Params(params.row, n, 0, params.clients, min(params.small, max(n, 1)), params.out)


def main(measure: Callable[[Params], Metrics], info: dict[str, Any]) -> None:
    """Parse the arguments, warm up, measure, write the result."""
    params = parse_args()
    started = perf_counter()
    if params.warmup > 0:
        measure(scaled(params, params.warmup))
    metrics = measure(params)
    result = {
        "row": params.row,
        "n": params.n,
        "metrics": metrics,
        "info": {
            "python": platform.python_version(),
            "executable": sys.executable,
            "wall_s": perf_counter() - started,
            **info,
        },
    }
    with open(params.out, "w") as f:
        json.dump(result, f)
