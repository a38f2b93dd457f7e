"""Cost arithmetic for the Claude provider: per-turn deltas from the CLI's running total, exact in decimal."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import otpy

log = otpy.get_logger("sessions.claude")


def cost_delta(now: float, before: float) -> float:
    """``now - before`` in decimal, rounded to a picodollar: 0.0168 - 0.0083 is 0.0085, not
    0.008500000000000001, so a turn's cost does not depend on what the process spent before."""
    return float(round(Decimal(repr(now)) - Decimal(repr(before)), 12))


def cost_sum(a: float, b: float) -> float:
    return float(round(Decimal(repr(a)) + Decimal(repr(b)), 12))


def restored_costs(path: Path, session_id: str) -> tuple[float, dict[str, dict[str, float]]]:
    """The running total a resumed CLI starts from: the last ``cost-state`` line of the
    transcript it resumes (Claude Code writes one when a process ends, and restores it
    on ``--resume``). (0, {}) when there is none."""
    total, model_usage = 0.0, {}
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if '"cost-state"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("type") == "cost-state" and entry.get("sessionId") == session_id:
                    total = float(entry.get("totalCostUSD") or 0.0)
                    model_usage = {
                        model: {k: float(v) for k, v in usage.items() if isinstance(v, (int, float))}
                        for model, usage in (entry.get("modelUsage") or {}).items()
                        if isinstance(usage, dict)
                    }
    except OSError:
        pass
    return total, model_usage
